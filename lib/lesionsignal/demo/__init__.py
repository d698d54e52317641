"""The embedded demo cohort: PA chest films rendered from one real chest CT, with decided findings and boxed lesions.

Modules, in the order the data flows through them (each imports only those above it, and lesionsignal.core and
lesionsignal.data):

* ``ct``: the source CT files, read and reoriented; ``masks``: bounding boxes and dilation of masks.
* ``prep_params``, ``cleanup``, ``landmarks``, ``slabs``, ``prepare``: the prepared CT, computed once and cached.
* ``anatomy``: a subject; ``edits``, ``heart``, ``lesions``, ``edema``: changes made in the CT as slab deltas.
* ``projection``: deformation, pose and canvas map; ``film``: film physics; ``render``: one film and its boxes.
* ``config``: the cohort configuration; ``sampling``: the seeded plan of every film.
* ``outputs``: records, labels.csv and box JSON; ``folder``: the folder's lifecycle; ``jobs``: films to disk;
  ``build``: :func:`~lesionsignal.demo.build.build_demo_cohort`.

Nothing is imported here, so that importing one module (the configuration, say) loads no other.
"""

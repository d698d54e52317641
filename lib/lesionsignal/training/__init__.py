"""Training the demo encoder: self-supervised pretraining of a small Dinov2Model on rendered films.

In the order data flows: ``recipe`` (the hyperparameters as one record, the method among them), ``multicrop`` (the
augmented views of one film), ``dino`` (self-distillation: head, loss, teacher update, schedules), ``mae``
(masked-image modelling: visible-patch encoding, pixel decoder, loss), ``loop`` (the seeded, resumable training
loop for either method), ``model_folder`` (the result as a hub-layout folder with its model card and weight digest).
Nothing here reads params or renders films: ``lesionsignal.pipeline.demo_encoder`` does, then calls in.
"""

"""The pieces both training loops share (floor 4): devices and torchrun set-up
(:mod:`~molgiae.train.distributed`), the learning-rate schedule (:mod:`~molgiae.train.schedule`),
conformer sampling (:mod:`~molgiae.train.sampling`) and the epoch progress bar
(:mod:`~molgiae.train.progress`). The loops themselves are :func:`molgiae.training.train` (the
autoencoder) and :func:`molgiae.finetune.loop.finetune` (property heads).
"""

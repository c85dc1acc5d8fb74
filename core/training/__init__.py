"""Training: the trainer (``trainer``: loop, schedule, EMA, validation), pickle-free checkpoints (``checkpoint``) and
the MDM objective's masking processes (``masking``). Objectives themselves are plugins (``unmask.core.objective``)."""

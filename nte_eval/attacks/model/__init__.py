"""Model attacks: adapt the unauthorized model rather than reconstruct the input. ``base`` (``ModelAttack``,
``NotApplicable``, ``Diverged``), ``training`` (the parts they are composed from), ``normalization`` (bn_adapt,
tent), ``finetune`` (noise_finetune, self_train)."""

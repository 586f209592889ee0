"""What every training job shares: a run's life (``run``: resume, fingerprint, logs, progress bar, crash-safe
``checkpoint``s, TensorBoard and CSV ``logger``), and the LM training loop of the stages (``trainer``)."""

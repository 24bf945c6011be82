"""The bench wing: what each method costs on your hardware, measured by commands anyone can rerun.

Owns the step benchmark (``steps``), the side-by-side with peers (``peers``), fine-tuning vs PGD-AT from scratch
(``time_to_robust``) and the data pipeline against the step (``data_pipeline``). It sits above every other wing and
may import any of them; only ``cli`` imports it.
"""

"""Helpers shared by the training tests."""


def run_args(tmp_path, **kwargs):
    """train() settings for a seconds-long digits run in ``tmp_path/run``."""
    args = dict(dataset="digits", epochs=1, batch_size=64,
                noise_multiplier=1.0, output_dir=str(tmp_path / "run"),
                verbose=0, noise_seed=3)
    args.update(kwargs)
    return args

"""The ``keras-tempered-dp`` command: thin flags over importable functions.

    keras-tempered-dp train [--flags]              one DP training run
    keras-tempered-dp reproduce --dataset=D        the paper's row for D
    keras-tempered-dp tune [--flags]               search (s, T, o)
    keras-tempered-dp audit [--flags]              train with canaries and
                                                   bound epsilon from below
    keras-tempered-dp plot-activations [--flags]   draw the family

``keras-tempered-dp train`` with no flags trains a DP model on the digits
bundled with scikit-learn (offline, about a minute on 2 CPU cores).
``keras-tempered-dp COMMAND --help`` lists that command's flags. ``train``'s
flags are the fields of :class:`~keras_tempered_dp.training.RunConfig`,
made here from the dataclasses, so a new setting is one field there.

Errors print as one message (``--traceback`` shows where they came from).
"""

import argparse
import dataclasses
import os
import shlex
import sys
import typing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

COMMANDS = ("train", "reproduce", "tune", "audit", "plot-activations")
USAGE = (f"keras-tempered-dp {{{'|'.join(COMMANDS)}}} [--flags]; "
         "keras-tempered-dp COMMAND --help lists a command's flags")


def _boolean(text):
    value = str(text).lower()
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def add_flag(parser, name, kind, help, default=argparse.SUPPRESS,
             choices=None):
    """``--name=value``; booleans also as ``--name`` and ``--noname``."""
    if kind is bool:
        parser.add_argument(f"--{name}", nargs="?", const=True,
                            type=_boolean, default=default, help=help)
        parser.add_argument(f"--no{name}", dest=name, action="store_false",
                            default=default, help=argparse.SUPPRESS)
        return
    parser.add_argument(f"--{name}", type=kind, default=default,
                        choices=choices, help=help, metavar=name.upper())


def _field_kind(field):
    kind = field.type
    if isinstance(kind, str):  # postponed annotations
        kind = eval(kind, vars(typing))
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    return args[0] if args else kind


def _train_flags(parser):
    from keras_tempered_dp.training.config import flag_fields
    for field in flag_fields():
        default = field.default
        help = field.metadata.get("help", "")
        if default is not None and default is not dataclasses.MISSING:
            help += f" (default: {default})"
        add_flag(parser, field.name, _field_kind(field), help,
                 choices=field.metadata.get("choices"))


def _data_flags(parser, output_dir):
    from keras_tempered_dp.data import DATASETS
    add_flag(parser, "dataset", str, "Dataset.", "digits",
             choices=tuple(DATASETS))
    add_flag(parser, "data_dir", str, "TFDS data folder.", None)
    add_flag(parser, "manual_dir", str, "Folder with the dataset's "
             "original files (offline preparation).", None)
    add_flag(parser, "download", bool, "Allow TFDS downloads.", True)
    add_flag(parser, "seed", int, "Seed for initialization and "
             "shuffling.", 0)
    add_flag(parser, "output_dir", str, "Where results go.", output_dir)


def _reproduce_flags(parser):
    from keras_tempered_dp.experiments import RECIPES
    from keras_tempered_dp.models import MODELS
    _data_flags(parser, "runs/reproduce")
    add_flag(parser, "recipe", str, "'paper' (tanh against ReLU, Papernot "
             "et al.), 'scale' (De et al.'s recipe with tempered sigmoids), "
             "'scatternet' (Tramer & Boneh's ScatterNet models beside the "
             "end-to-end CNN), 'transformer' (a ViT's MLP activation: GELU, "
             "ReLU, tanh, tempered sigmoid) or 'recurrent' (an LSTM's: tanh, "
             "ReLU).", "paper", choices=tuple(RECIPES))
    add_flag(parser, "model", str, "paper: a registry model instead of the "
             "dataset's, e.g. scatternet_cnn.", None,
             choices=tuple(MODELS))
    add_flag(parser, "activations", lambda t: t.split(","), "paper: the "
             "activations to compare, comma-separated (default tanh,relu).",
             None)
    add_flag(parser, "epochs", int, "Override the setting's epochs (a "
             "quick look; the table then differs from the paper's).", None)
    add_flag(parser, "seeds", _seed_list,
             "Several seeds, comma-separated (instead of --seed): every run "
             "once per seed, and the table's medians.", None)
    add_flag(parser, "verbose", int, "Keras' progress output.", 2)
    _accountant_flag(parser)


def _number_pair(text):
    """``--learning_rate_range=0.1,2`` -> (0.1, 2.0)."""
    values = tuple(float(value) for value in text.split(","))
    if len(values) != 2:
        raise ValueError(text)
    return values


_number_pair.__name__ = "pair of numbers"


def _seed_list(text):
    """``--seeds=0,1,2`` -> [0, 1, 2]."""
    return [int(value) for value in text.split(",")]


_seed_list.__name__ = "seed list"  # argparse: "invalid seed list value"


def _accountant_flag(parser):
    from keras_tempered_dp.privacy.accounting import ACCOUNTANTS
    add_flag(parser, "accountant", str, "rdp (default) or pld: the "
             "accountant that calibrates the noise to the target epsilon.",
             "rdp", choices=ACCOUNTANTS)


def _tune_flags(parser):
    from keras_tempered_dp.models import MODELS
    from keras_tempered_dp.privacy.selection import (
        DISTRIBUTIONS,
        SCORE_NOISE_HINT,
    )
    _data_flags(parser, "runs/tune")
    # Checked, with search()'s other arguments, by tuning.SearchSettings.
    add_flag(parser, "private", bool, "One (epsilon, delta) guarantee for "
             "the whole search and the released best model (Papernot & "
             "Steinke): a secret, random number of trials, noised scores.",
             False)
    add_flag(parser, "target_epsilon", float, "--private: the whole "
             "search's epsilon; otherwise every trial's.", 3.0)
    add_flag(parser, "max_trials", int, "Without --private: the number of "
             "trials (>= 1; default 10). --private draws it in secret "
             "instead (--trials_mean).", None)
    add_flag(parser, "trials_mean", float, "--private: the expected number "
             "of trials E[K].", 5.0)
    add_flag(parser, "trials_distribution", str, "--private: the law of "
             "the number of trials.", "truncated_negative_binomial",
             choices=DISTRIBUTIONS)
    add_flag(parser, "trials_eta", float, "--private: the truncated "
             "negative binomial's shape (> -1; 0 logarithmic, 1 "
             "geometric).", 0.0)
    add_flag(parser, "score_noise", float, "--private: " + SCORE_NOISE_HINT,
             20.0)
    add_flag(parser, "public_validation", str, "An .npz file with arrays x "
             "and y of public validation data: trials are ranked by their "
             "exact accuracy on it, at no privacy cost, and train on the "
             "whole training set.", None)
    add_flag(parser, "validation_fraction", float, "The share of the "
             "training set held out to score trials (without "
             "--public_validation).", 0.1)
    add_flag(parser, "epochs", int, "Epochs per trial (>= 1).", 5)
    add_flag(parser, "batch_size", int, "Batch size (>= 1).", 64)
    add_flag(parser, "l2_norm_clip", float, "Fix the clipping norm "
             "(default: searched).", None)
    add_flag(parser, "learning_rate_range", _number_pair, "LOW,HIGH: the "
             "learning rate's log-uniform range (default 0.001,4).", None)
    add_flag(parser, "delta", float, "delta, in (0, 1/N); default "
             "min(1e-5, 1/(10 N)).", None)
    add_flag(parser, "model", str, "The model searched (default: the "
             "dataset's); ScatterNet features are computed once.", None,
             choices=tuple(MODELS))
    _accountant_flag(parser)


def _audit_flags(parser):
    from keras_tempered_dp.audit.job import CANARIES, AuditConfig
    _train_flags(parser)  # the audited run's settings, as for train
    helps = {
        "canaries": "gradient (white-box: injected by the clipping engine) "
                    "or input (black-box: mislabelled examples scored by "
                    "loss).",
        "num_canaries": "Canaries (>= 50), each included with a secret "
                        "fair coin.",
        "confidence": "Confidence of the lower bounds.",
        "canary_seed": "Seed of the inclusion draws (tests and reruns "
                       "only; default: the OS's entropy, secret).",
        "mia_examples": "Training and test examples each for the "
                        "membership-inference summary.",
    }
    for field in dataclasses.fields(AuditConfig):
        add_flag(parser, field.name, _field_kind(field),
                 f"{helps[field.name]} (default: {field.default})",
                 choices=CANARIES if field.name == "canaries" else None)


def _plot_flags(parser):
    add_flag(parser, "triples", str, "s,T,o triples separated by "
             "semicolons, e.g. --triples='2,2,1;1,1,0'.",
             "2,2,1;1,1,0;2,1,1;3,4,1.5")
    add_flag(parser, "output_dir", str, "Where the plot goes.",
             "runs/plot-activations")


def run_train(args):
    from keras_tempered_dp.training import train
    settings = {k: v for k, v in vars(args).items()
                if k not in ("command", "traceback")}
    results = train(**settings)
    out = results["config"]["output_dir"]
    print(f"test accuracy {100 * results['test_accuracy']:.2f}%")
    print(results["privacy"])
    print(f"wrote {out}/results.json, log.csv, tensorboard/, model.keras")


def run_reproduce(args):
    from keras_tempered_dp.experiments import reproduce
    command = "keras-tempered-dp " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    rows, folder = reproduce(
        dataset=args.dataset, recipe=args.recipe,
        activations=args.activations, output_dir=args.output_dir,
        epochs=args.epochs, data_dir=args.data_dir,
        manual_dir=args.manual_dir, download=args.download, seed=args.seed,
        verbose=args.verbose, command=command, accountant=args.accountant,
        model=args.model, seeds=args.seeds)
    for row in rows:
        print(f"{row['run']}: {row['test_accuracy']:.2f}% at epsilon "
              f"{row['epsilon']:.3f}")
    print(f"wrote {folder}/table.md and accuracy_vs_epsilon.png")


def run_tune(args):
    from keras_tempered_dp.tuning import search
    from keras_tempered_dp.tuning.search import read_public_validation
    settings = {k: v for k, v in vars(args).items()
                if k not in ("command", "traceback")}
    settings["public_validation"] = read_public_validation(
        args.public_validation)
    if args.private:  # nothing printed while it runs may show K
        print("private search: the number of trials is secret, so nothing "
              "is shown until it ends.", flush=True)
    results = search(**settings)
    best = results["best"]
    if not args.private:
        for i, trial in enumerate(results["trials"]):
            outcome = ("diverged" if trial.get("failed") else
                       f"validation accuracy "
                       f"{trial['validation_accuracy']:.4f}, epsilon "
                       f"{trial['epsilon']:.3f}")
            print(f"trial {i}: {_values(trial['hyperparameters'])}; "
                  f"{outcome}")
    if best is not None:
        print(f"best: {_values(best['hyperparameters'])}; score "
              f"{best['score']:.4f}, test accuracy "
              f"{best['test_accuracy']:.4f}")
    else:
        print(results["no_trial"])
    print(results["statement"])
    print(results.get("unprotected") or results["not_covered"])
    print(f"wrote {args.output_dir}/results.json"
          + (" and model.keras" if best is not None else ""))


def _values(hyperparameters):
    return ", ".join(f"{k} {v:.4g}" for k, v in hyperparameters.items())


def run_audit(args):
    from keras_tempered_dp.audit.job import audit
    settings = {k: v for k, v in vars(args).items()
                if k not in ("command", "traceback")}
    report = audit(**settings)
    print(report["statement"])
    print(f"wrote {report['training']['output_dir']}/audit.json, "
          "canaries.npz and the training run's outputs")


def run_plot(args):
    from keras_tempered_dp.plots import plot_activations
    triples = []
    for item in args.triples.replace(";", " ").split():
        try:
            triples.append(tuple(float(v) for v in item.split(",")))
        except ValueError:
            raise ValueError(f"triples: {item!r} is not three numbers "
                             "s,T,o (e.g. --triples='2,2,1;1,1,0').")
        if len(triples[-1]) != 3:
            raise ValueError(f"triples: {item!r} has {len(triples[-1])} "
                             "numbers; each triple is s,T,o.")
    os.makedirs(args.output_dir, exist_ok=True)
    print(plot_activations(triples, os.path.join(
        args.output_dir, "tempered_sigmoids.png")))


HANDLERS = {
    "train": (run_train, _train_flags, "One DP training run (see "
              "keras_tempered_dp.training.train)."),
    "reproduce": (run_reproduce, _reproduce_flags, "The paper's table (or "
                  "De et al.'s recipe) for one dataset."),
    "tune": (run_tune, _tune_flags, "A keras-tuner search over (s, T, o); "
             "spends privacy too."),
    "audit": (run_audit, _audit_flags, "Train with canaries and bound the "
              "run's epsilon from below (see keras_tempered_dp.audit)."),
    "plot-activations": (run_plot, _plot_flags, "Draw tempered sigmoids."),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-tempered-dp", usage=USAGE, allow_abbrev=False,
        description="Tempered sigmoids and DP-SGD for Keras.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, flags, help) in HANDLERS.items():
        sub = commands.add_parser(name, help=help, description=help,
                                  allow_abbrev=False)
        flags(sub)
        sub.add_argument("--traceback", action="store_true",
                         help="On an error, show the Python traceback.")
    return parser


def main(argv=None):
    """Parses ``argv`` and runs the command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("give a command")
    handler = HANDLERS[args.command][0]
    try:
        handler(args)
    except KeyboardInterrupt:
        print(f"keras-tempered-dp {args.command}: interrupted. A train run "
              "continues from its last finished epoch with --resume.",
              file=sys.stderr)
        return 130
    except Exception as error:  # one message, not a traceback
        if args.traceback:
            raise
        print(f"keras-tempered-dp {args.command}: error: {error}\n"
              "(--traceback shows where it came from)", file=sys.stderr)
        return 2
    return 0


def run():
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()

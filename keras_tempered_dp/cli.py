"""The ``keras-tempered-dp`` command: thin flags over importable functions.

    keras-tempered-dp train [--flags]              one DP training run
    keras-tempered-dp reproduce --dataset=D        the paper's row for D
    keras-tempered-dp tune [--flags]               search (s, T, o)
    keras-tempered-dp plot-activations [--flags]   draw the family

``keras-tempered-dp train`` with no flags trains a DP model on the digits
bundled with scikit-learn (offline, about a minute on 2 CPU cores).
"""

import os
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

COMMANDS = ("train", "reproduce", "tune", "plot-activations")

F = flags.FLAGS
flags.DEFINE_enum("dataset", "digits",
                  ["digits", "mnist", "fashion_mnist", "cifar10"],
                  "Dataset.")
flags.DEFINE_string("model", None, "mnist_cnn, cifar10_cnn, digits_cnn or "
                    "wrn16_4; default: the paper's model for the dataset.")
flags.DEFINE_string("activation", "tempered_sigmoid",
                    "tempered_sigmoid (with --s --T --o), tanh, relu, or "
                    "any registered name.")
flags.DEFINE_float("s", 2.0, "Tempered sigmoid scale s > 0.")
flags.DEFINE_float("T", 2.0, "Tempered sigmoid inverse temperature T > 0.")
flags.DEFINE_float("o", 1.0, "Tempered sigmoid offset o.")
flags.DEFINE_integer("epochs", 15, "Epochs.")
flags.DEFINE_integer("batch_size", 64, "(Expected) batch size.")
flags.DEFINE_float("learning_rate", 0.05, "SGD learning rate.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("l2_norm_clip", 1.0, "Per-example clipping norm C.")
flags.DEFINE_float("noise_multiplier", 1.0,
                   "Noise std in units of C (ignored with --target_epsilon).")
flags.DEFINE_float("target_epsilon", None,
                   "Calibrate the noise so the run ends at this epsilon.")
flags.DEFINE_float("delta", None, "delta; default min(1e-5, 1/(10 N)).")
flags.DEFINE_enum("sampling", "poisson", ["poisson", "shuffle"],
                  "poisson: what the accountant assumes; shuffle: Keras' "
                  "fixed-size batches (epsilon then by convention).")
flags.DEFINE_integer("seed", 0, "Seed for initialization and shuffling.")
flags.DEFINE_string("output_dir", None, "Where results go; default "
                    "runs/<command>.")
flags.DEFINE_bool("resume", False, "Continue from the last epoch checkpoint "
                  "in --output_dir.")
flags.DEFINE_string("data_dir", None, "TFDS data folder.")
flags.DEFINE_string("manual_dir", None, "Folder with the dataset's original "
                    "files (offline preparation).")
flags.DEFINE_bool("download", True, "Allow TFDS downloads.")
flags.DEFINE_list("activations", ["tanh", "relu"],
                  "reproduce: the activations to compare.")
flags.DEFINE_enum("recipe", "paper", ["paper", "scale"],
                  "reproduce: 'paper' (tanh against ReLU, Papernot et al.) "
                  "or 'scale' (De et al.'s recipe with tempered sigmoids).")
flags.DEFINE_integer("augmentation_multiplicity", 1,
                     "K augmented copies per example, averaged before "
                     "clipping (De et al.); 1: no augmentation.")
flags.DEFINE_integer("crop_padding", 4, "Random-crop padding (pixels) for "
                     "augmentation multiplicity.")
flags.DEFINE_bool("flip", True, "Random horizontal flips for augmentation "
                  "multiplicity.")
flags.DEFINE_float("ema_decay", None, "Keep an EMA of the weights with this "
                   "decay (e.g. 0.9999) and evaluate and save it.")
flags.DEFINE_integer("physical_batch_size", None, "Accumulate the clipped "
                     "sums over chunks of this many examples (large "
                     "logical batches in little memory).")
flags.DEFINE_enum("clipping", "clip", ["clip", "normalize", "quantile"],
                  "clip: C / max(||g||, C); normalize: C / (||g|| + gamma); "
                  "quantile: C follows a private quantile estimate "
                  "(Andrew et al.), starting at --l2_norm_clip.")
flags.DEFINE_float("target_quantile", 0.5, "--clipping=quantile: the "
                   "quantile of per-example norms C tracks.")
flags.DEFINE_float("gamma", 0.01, "Stabilizer of --clipping=normalize.")
flags.DEFINE_enum("noise_schedule", "constant",
                  ["constant", "step", "exponential", "time"],
                  "Noise multiplier by epoch; epsilon is composed exactly.")
flags.DEFINE_float("noise_decay", None, "step: factor in (0, 1]; "
                   "exponential / time: rate >= 0.")
flags.DEFINE_integer("noise_decay_period", 1, "step: epochs per decay.")
flags.DEFINE_integer("max_trials", 10, "tune: number of trials.")
flags.DEFINE_string("triples", "2,2,1;1,1,0;2,1,1;3,4,1.5",
                    "plot-activations: s,T,o triples separated by "
                    "semicolons, e.g. --triples='2,2,1;1,1,0'.")


def _command(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(
            f"Usage: keras-tempered-dp {{{'|'.join(COMMANDS)}}} [--flags]. "
            "Run with --helpfull for every flag.")
    return argv[1]


def main(argv):
    command = _command(argv)
    out = F.output_dir or os.path.join("runs", command)
    if command == "train":
        from keras_tempered_dp.training import train
        results = train(
            dataset=F.dataset, model=F.model, activation=F.activation,
            s=F.s, T=F.T, o=F.o, epochs=F.epochs, batch_size=F.batch_size,
            learning_rate=F.learning_rate, momentum=F.momentum,
            l2_norm_clip=F.l2_norm_clip,
            noise_multiplier=(None if F.target_epsilon is not None
                              else F.noise_multiplier),
            target_epsilon=F.target_epsilon, delta=F.delta,
            sampling=F.sampling, seed=F.seed, output_dir=out,
            resume=F.resume, data_dir=F.data_dir, manual_dir=F.manual_dir,
            download=F.download,
            augmentation_multiplicity=F.augmentation_multiplicity,
            crop_padding=F.crop_padding, flip=F.flip, ema_decay=F.ema_decay,
            physical_batch_size=F.physical_batch_size, clipping=F.clipping,
            gamma=F.gamma, target_quantile=F.target_quantile,
            noise_schedule=F.noise_schedule,
            noise_decay=F.noise_decay,
            noise_decay_period=F.noise_decay_period)
        print(f"test accuracy {100 * results['test_accuracy']:.2f}%")
        print(results["privacy"])
        print(f"wrote {out}/results.json, log.csv, tensorboard/, model.keras")
    elif command == "reproduce":
        command_line = "keras-tempered-dp " + " ".join(
            shlex.quote(a) for a in _ORIGINAL_ARGV[1:])
        if F.recipe == "scale":
            from keras_tempered_dp.recipes import reproduce_scale
            rows = reproduce_scale(
                dataset=F.dataset, output_dir=out, data_dir=F.data_dir,
                manual_dir=F.manual_dir, download=F.download, seed=F.seed,
                command=command_line)
            folder = os.path.join(out, F.dataset + "_scale")
        else:
            from keras_tempered_dp.reproduce import reproduce
            rows = reproduce(
                dataset=F.dataset, output_dir=out, activations=F.activations,
                data_dir=F.data_dir, manual_dir=F.manual_dir,
                download=F.download, seed=F.seed, command=command_line)
            folder = os.path.join(out, F.dataset)
        for row in rows:
            print(f"{row['activation']}: {row['test_accuracy']:.2f}% at "
                  f"epsilon {row['epsilon']:.3f}")
        print(f"wrote {folder}/table.md and accuracy_vs_epsilon.png")
    elif command == "tune":
        from keras_tempered_dp.tuning import TUNING_PRIVACY_NOTE, search
        best, noise = search(
            dataset=F.dataset,
            target_epsilon=F.target_epsilon or 3.0, max_trials=F.max_trials,
            epochs=F.epochs, batch_size=F.batch_size, delta=F.delta,
            seed=F.seed, output_dir=out, data_dir=F.data_dir,
            manual_dir=F.manual_dir, download=F.download)
        print(f"best (s, T, o) = ({best['s']:.3g}, {best['T']:.3g}, "
              f"{best['o']:.3g}); learning_rate {best['learning_rate']:.3g},"
              f" l2_norm_clip {best['l2_norm_clip']:.3g}; every trial used "
              f"noise_multiplier {noise:.4f}")
        print(TUNING_PRIVACY_NOTE)
    else:
        from keras_tempered_dp.plots import plot_activations
        triples = []
        for item in F.triples.replace(";", " ").split():
            triples.append(tuple(float(v) for v in item.split(",")))
        os.makedirs(out, exist_ok=True)
        print(plot_activations(triples,
                               os.path.join(out, "tempered_sigmoids.png")))


# The command line as typed: absl removes the flags it parsed from argv.
_ORIGINAL_ARGV = list(sys.argv)


def run():
    """Console-script entry point."""
    _ORIGINAL_ARGV[:] = sys.argv
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    run()

"""Writes table.md from the output folder of run.sh.

    python docs/results/fashion_mnist_tuning/summarize.py OUT_FOLDER
"""

import json
import os
import statistics
import sys


def _read(folder):
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def _values(hp):
    names = ("s", "T", "o", "learning_rate")
    return ", ".join(f"{n} {hp[n]:.3g}" for n in names if n in hp)


def rows(out):
    table = []
    for seed in range(3):
        r = _read(os.path.join(out, f"tanh_{seed}"))
        table.append(("fixed tanh, learning rate 0.4", seed,
                      100 * r["test_accuracy"], r["epsilon"], "(2.7 by "
                      "itself)", "s 2, T 2, o 1, learning_rate 0.4"))
    for run in range(3):
        r = _read(os.path.join(out, f"private_{run}"))
        best = r["best"]
        table.append(("private search, E[K] = 5", run,
                      100 * best["test_accuracy"], r["epsilon"],
                      "the whole search and its output",
                      _values(best["hyperparameters"])))
    for seed in range(3):
        r = _read(os.path.join(out, f"plain_{seed}"))
        best = r["best"]
        table.append(("plain search, 5 trials", seed,
                      100 * best["test_accuracy"], r["epsilon_all_trials"],
                      f"each trial {r['trial_epsilon']:.2f}; all 5 composed; "
                      "validation examples unprotected",
                      _values(best["hyperparameters"])))
    return table


def main(out):
    table = rows(out)
    lines = ["| run | seed/run | test accuracy (%) | epsilon (delta 1e-5) | "
             "what the epsilon covers | chosen |", "|---|---|---|---|---|---|"]
    for name, run, accuracy, epsilon, covers, chosen in table:
        lines.append(f"| {name} | {run} | {accuracy:.2f} | {epsilon:.3f} | "
                     f"{covers} | {chosen} |")
    lines += ["", "| run | median test accuracy (%) |", "|---|---|"]
    for name in dict.fromkeys(row[0] for row in table):
        median = statistics.median(r[2] for r in table if r[0] == name)
        lines.append(f"| {name} | {median:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1])

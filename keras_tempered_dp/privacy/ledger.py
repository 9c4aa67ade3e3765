"""The privacy ledger: every DP-SGD step a model really took, and its epsilon.

A DP-SGD run is a sequence of steps; step ``t`` is the subsampled Gaussian
mechanism with noise multiplier ``sigma_t`` at sampling rate ``q_t = B_t / N_t``
under one sampling scheme. The ledger keeps these steps as run-length
:class:`~keras_tempered_dp.privacy.accounting.Segment` objects (adjacent steps
with equal ``(N, B, sigma, sampling, microbatching)`` merged), and the
privacy spent is their composition,

    epsilon(delta) = compose(segment_1, ..., segment_k)   (RDP or PLD),

exactly what :func:`~keras_tempered_dp.privacy.accounting.compose_epsilon`
computes. Nothing else enters: not a plan, not a callback's settings, not
the number of ``fit`` calls. Steps whose data was never declared (a ``fit``
without an :class:`~keras_tempered_dp.callbacks.EpsilonCallback`, a custom
loop) are kept as *unattributed* runs ``(sigma, steps, largest batch)``; no
epsilon is computed while any exist, because their N and sampling are
unknown and guessing them could understate what was spent.

This module is pure Python: no Keras, no TensorFlow. Where a ledger lives
(on the model, in a checkpoint, in a saved ``.keras`` file) is
:mod:`keras_tempered_dp.privacy.state` and :mod:`.saving`; how the engine
records its steps is :mod:`keras_tempered_dp.privacy.clipping.backend.tensorflow.step_record`.

Example:

>>> ledger = Ledger()
>>> ledger.record(Segment(1400, 56, 25, 1.0))
>>> ledger.record(Segment(1400, 56, 75, 1.0))
>>> ledger.steps, len(ledger.segments)
(100, 1)
>>> round(ledger.epsilon(delta=1e-4), 3)
2.724
>>> Ledger.from_dict(ledger.to_dict()) == ledger
True
"""

import dataclasses

from keras_tempered_dp.privacy.accounting import (
    Segment,
    accountant_name,
    check_accountant,
    compose_epsilon,
    merge_segments,
)

# The format of :meth:`Ledger.to_dict`; a saved ledger of another version is
# refused rather than misread. Format 2 added private searches; a format-1
# ledger (none) still reads.
FORMAT = 2
READABLE_FORMATS = (1, 2)


class UnattributedStepsError(ValueError):
    """The ledger holds steps whose dataset size and sampling are unknown."""


@dataclasses.dataclass(frozen=True)
class Unattributed:
    """Steps that ran outside any declared ``fit``: their noise is known
    (the step recorded it), their N and sampling are not.

    Attributes:
        noise_multiplier: sigma of these steps.
        steps: how many.
        max_batch_size: the largest number of examples one of them saw
            (0 when not recorded).
        used_microbatching: their microbatches held more than one example
            (the analysis halves sigma).
    """

    noise_multiplier: float
    steps: int
    max_batch_size: int = 0
    used_microbatching: bool = False


class Ledger:
    """The steps a model took, as segments; see the module docstring.

    Args:
        segments: :class:`Segment` objects already spent, in order.
        unattributed: :class:`Unattributed` runs, in order.
        searches: :class:`~keras_tempered_dp.privacy.selection.
            SearchRecord` objects: private searches that chose this model
            (their RDP is composed with the segments'; "rdp" only).
    """

    def __init__(self, segments=(), unattributed=(), searches=()):
        self._segments = []
        self._unattributed = []
        self._searches = []
        for segment in segments:
            self.record(segment)
        for run in unattributed:
            self.record_unattributed(run)
        for search in searches:
            self.record_search(search)

    # -- what it holds -------------------------------------------------
    @property
    def segments(self):
        """The attributed segments, adjacent equal ones merged (a tuple)."""
        return tuple(self._segments)

    @property
    def unattributed(self):
        """The :class:`Unattributed` runs (a tuple)."""
        return tuple(self._unattributed)

    @property
    def searches(self):
        """The private searches that chose the model (a tuple)."""
        return tuple(self._searches)

    @property
    def steps(self):
        """Every step recorded, attributed or not (a search's: the steps
        of the trial that made the model)."""
        return (sum(s.steps for s in self._segments)
                + sum(u.steps for u in self._unattributed)
                + sum(r.trial.steps for r in self._searches))

    def __eq__(self, other):
        return (isinstance(other, Ledger)
                and self.segments == other.segments
                and self.unattributed == other.unattributed
                and self.searches == other.searches)

    def __repr__(self):
        return (f"Ledger({len(self._segments)} segments, {self.steps} "
                f"steps, {len(self._unattributed)} unattributed)")

    # -- recording -------------------------------------------------------
    def record(self, segment):
        """Appends ``segment`` (merged into the last one when only the
        steps differ)."""
        if not isinstance(segment, Segment):
            raise ValueError(f"{segment!r} is not a Segment.")
        if segment.steps == 0:
            return
        self._segments[:] = merge_segments(self._segments + [segment])

    def record_search(self, search):
        """Appends a private search that chose the model."""
        from keras_tempered_dp.privacy.selection import SearchRecord
        if not isinstance(search, SearchRecord):
            raise ValueError(f"{search!r} is not a SearchRecord.")
        self._searches.append(search)

    def record_unattributed(self, run):
        if not isinstance(run, Unattributed):
            raise ValueError(f"{run!r} is not an Unattributed run.")
        if run.steps == 0:
            return
        last = self._unattributed[-1] if self._unattributed else None
        if last is not None and last.noise_multiplier == run.noise_multiplier:
            self._unattributed[-1] = Unattributed(
                last.noise_multiplier, last.steps + run.steps,
                max(last.max_batch_size, run.max_batch_size),
                last.used_microbatching or run.used_microbatching)
        else:
            self._unattributed.append(run)

    def attribute(self, *, num_examples, batch_size, sampling="poisson",
                  used_microbatching=False):
        """Declares the data of the unattributed steps and moves them into
        the segments: the caller vouches that they sampled ``batch_size``
        of ``num_examples`` examples under ``sampling``.

        Raises:
            ValueError: if ``batch_size`` is below the largest batch one
                of those steps saw (that would understate q).
        """
        for run in self._unattributed:
            if run.max_batch_size > batch_size:
                raise ValueError(
                    f"batch_size={batch_size}: an unattributed step saw "
                    f"{run.max_batch_size} examples; declare at least that.")
        runs, self._unattributed = self._unattributed, []
        for run in runs:
            self.record(Segment(num_examples, batch_size, run.steps,
                                run.noise_multiplier, sampling,
                                used_microbatching
                                or run.used_microbatching))

    # -- epsilon -----------------------------------------------------------
    def epsilon(self, *, delta, accountant="rdp", sampling=None):
        """Epsilon of every recorded step at ``delta``.

        Args:
            delta: of (epsilon, delta)-DP, below 1/N of every segment.
            accountant: "rdp" (default) or "pld".
            sampling: the neighbouring relation; by default the one the
                segments share.

        Raises:
            UnattributedStepsError: while unattributed steps exist.
            ValueError: for segments of two sampling schemes, bad delta.
        """
        self.check_attributed()
        if sampling is None:
            kinds = {s.sampling for s in self._segments} or {"poisson"}
            if len(kinds) > 1:
                raise ValueError(
                    f"The ledger mixes sampling schemes {sorted(kinds)}: no "
                    "one neighbouring relation covers the run.")
            sampling = kinds.pop()
        check_accountant(accountant, sampling)
        if self._searches:
            return self._epsilon_with_searches(delta, accountant, sampling)
        return compose_epsilon(self._segments, delta=delta,
                               sampling=sampling, accountant=accountant)

    def _epsilon_with_searches(self, delta, accountant, sampling):
        """RDP composition of the searches' curves and the segments'."""
        from keras_tempered_dp.privacy.accounting import (
            RDP_ORDERS,
            check_delta,
            one_step_rdp,
        )
        from keras_tempered_dp.privacy.selection import epsilon_of_rdp
        if accountant != "rdp" or sampling != "poisson":
            raise ValueError(
                f"accountant={accountant!r}: a private search chose this "
                "model, and its bound is Renyi DP with Poisson sampling; "
                "compose it with accountant='rdp' and Poisson-sampled "
                "steps.")
        check_delta(delta, max(
            [s.num_examples for s in self._segments]
            + [r.trial.num_examples for r in self._searches]))
        total = sum(r.rdp() for r in self._searches)
        for s in self._segments:
            total = total + s.steps * one_step_rdp(
                s.num_examples, s.batch_size, s.accounted_noise_multiplier,
                s.sampling)
        return epsilon_of_rdp(total, delta=delta, orders=RDP_ORDERS)

    def check_attributed(self):
        if self._unattributed:
            steps = sum(u.steps for u in self._unattributed)
            raise UnattributedStepsError(
                f"The model took {steps} DP-SGD steps outside any fit with "
                "an EpsilonCallback (or train()), so their dataset size and "
                "sampling were never declared and no epsilon can be stated "
                "for them. Declare them: privacy_ledger(model).attribute("
                "num_examples=N, batch_size=B) (you vouch for N and B), or "
                "train with an EpsilonCallback in every fit.")

    def statement(self, *, delta, accountant="rdp"):
        """A sentence stating the ledger's epsilon and what it assumes.

        >>> Ledger([Segment(60000, 256, 14100, 1.1)]).statement(
        ...     delta=1e-5)[:49]
        '(2.600, 1e-05)-DP for each example: DP-SGD, 14100'
        """
        epsilon = self.epsilon(delta=delta, accountant=accountant)
        parts = "; ".join(
            f"{s.steps} at N={s.num_examples}, batch_size={s.batch_size}, "
            f"noise_multiplier={s.noise_multiplier:g}"
            + (" (halved: microbatches)" if s.used_microbatching else "")
            for s in self._segments)
        poisson = all(s.sampling == "poisson" for s in self._segments)
        how = ("Poisson subsampling with q = batch_size / N, "
               "add-or-remove-one neighbours" if poisson else
               "fixed-size batches sampled uniformly without replacement, "
               "replace-one neighbours")
        searches = "".join(f"; {r.describe()}" for r in self._searches)
        return (f"({epsilon:.3f}, {delta:g})-DP for each example: DP-SGD, "
                f"{self.steps} steps as the model recorded them "
                f"({parts or 'none'}){searches}; "
                f"{accountant_name(accountant)} assuming {how}.")

    # -- persistence ---------------------------------------------------------
    def to_dict(self):
        """A JSON-ready dictionary; :meth:`from_dict` reads it back."""
        return {"format": FORMAT,
                "segments": [dataclasses.asdict(s) for s in self._segments],
                "unattributed": [dataclasses.asdict(u)
                                 for u in self._unattributed],
                "searches": [r.to_dict() for r in self._searches]}

    @classmethod
    def from_dict(cls, data):
        """The ledger :meth:`to_dict` wrote.

        Raises:
            ValueError: for another format or a malformed entry.
        """
        from keras_tempered_dp.privacy.selection import SearchRecord
        if (not isinstance(data, dict)
                or data.get("format") not in READABLE_FORMATS):
            raise ValueError(
                f"Not a privacy ledger of format {FORMAT}: {str(data)[:200]}")
        try:
            return cls([Segment(**s) for s in data["segments"]],
                       [Unattributed(**u) for u in data["unattributed"]],
                       [SearchRecord.from_dict(r)
                        for r in data.get("searches", ())])
        except (KeyError, TypeError) as error:
            raise ValueError(f"A malformed privacy ledger ({error}).") \
                from error

"""One module per benchmark, each a :class:`~lit_unlearn.evaluation.core.Benchmark` subclass registered by
name in :data:`lit_unlearn.evaluation.core.BENCHMARKS`:

* ``tofu`` (:mod:`.tofu`): TOFU (Maini et al., 2024), the suite of :mod:`lit_unlearn.evaluation.suite`;
* ``muse`` (:mod:`.muse`): MUSE (Shi et al., 2024): VerbMem, KnowMem, PrivLeak, utility preservation;
* ``wmdp`` (:mod:`.wmdp`): WMDP (Li et al., 2024) multiple-choice accuracy through lm-evaluation-harness.
"""

"""mltm: mini-batch Learning-to-Match (m-LTM) for audio-text retrieval.

A literate reproduction of "Revisiting Deep Audio-Text Retrieval Through the Lens of
Transportation" (ICLR 2024). One module per concept:

- :mod:`mltm.ot`: batched log-domain Sinkhorn and partial optimal transport on the GPU,
  with implicit differentiation of the transport plan.
- :mod:`mltm.data`: manifests, audio front end, noisy correspondence.
- :mod:`mltm.metric`: the Mahalanobis ground metric (eq. 9) and its PSD projection (eq. 11).
- :mod:`mltm.losses`: m-LTM (eq. 10), partial m-LTM (eq. 12-13) and the baselines.
- :mod:`mltm.encoders`, :mod:`mltm.model`: text and audio encoders, projection heads.
- :mod:`mltm.train`, :mod:`mltm.eval`, :mod:`mltm.retrieval`: hybrid SGD training, retrieval
  and zero-shot evaluation (``python -m mltm.train``, ``python -m mltm.eval``).
- :mod:`mltm.distributed`: data-parallel training under ``torchrun`` (embeddings gathered
  with gradients so the plan spans the global batch, sharded batches, gradient averaging).
- :mod:`mltm.records`, :mod:`mltm.provenance`: recorded experiment runs with the commit,
  configuration, device and date that produced them.
- :mod:`mltm.experiments`: the book's experiment grids: encode a dataset once, run and record
  each run resumably, tidy tables of the records, this execution beside the recorded run.
- :mod:`mltm.stats`: paired statistics over seeds (exact sign-flip test, paired t interval)
  and over test queries (paired bootstrap resampling clusters of queries).
- :mod:`mltm.verdicts`: a paper claim checked on recorded runs: holds, reversed or undecided,
  with the test, its p-value and its interval.
"""

__version__ = "0.1.0"

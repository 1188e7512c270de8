"""mltm: mini-batch Learning-to-Match (m-LTM) for audio-text retrieval.

A literate reproduction of "Revisiting Deep Audio-Text Retrieval Through the Lens of
Transportation" (ICLR 2024). One module per concept:

- :mod:`mltm.ot`: batched log-domain Sinkhorn and partial optimal transport on the GPU,
  with implicit differentiation of the transport plan.
- :mod:`mltm.data`: manifests, audio front end, noisy correspondence.
"""

__version__ = "0.1.0"

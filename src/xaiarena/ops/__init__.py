"""Operations shared by components (explainers, metrics, models, dissection) and the API.

Each module does one thing; components import them, never the engine:

=================  ==========================================================================
``blur``           the Gaussian blur of image batches (padding and kernel form as parameters)
``fill``           what a removed pixel shows: ``make_fill``, the baselines and fills
``prediction``     model outputs over many inputs, a batch at a time (``predict_in_batches``)
``modes``          ``eval_mode`` and ``frozen``: model modes for a block, restored afterwards
``seeding``        global seeding and per-sample random streams independent of batch mates
``pairs``          the pairs of explainers agreement metrics compare, and their labels
``validation``     declarative option constraints, ``validate_options`` and ``OptionError``
=================  ==========================================================================
"""

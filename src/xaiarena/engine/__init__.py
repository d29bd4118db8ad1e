"""The run engine: how a config becomes cached artefacts, per-sample scores and run.json.

=================  ==========================================================================
module             role
=================  ==========================================================================
``plan``           units (grid point x replicate x dataset entry) and their views
``tasks``          the stage graph: the one table of task kinds (stage name, run, record),
                   task specs, :func:`~xaiarena.engine.tasks.plan_tasks`, running one task
``context``        per process and unit: the :class:`~xaiarena.engine.context.UnitContext`,
                   the stage recorder, the torch thread count of every task
``stages``         the stage functions: prepare (data, train, select), fit, explain, score
``meta_stage``     the perturbed problems of the metric meta-evaluation (``evaluation.meta``)
``batching``       compute settings and the one batching path of explainers and metrics
``executors``      ``local`` and ``ray``
``record``         run.json and the result frames, as tasks finish
``cache``          every cache key and the checksummed cache
``shards``         sample shards: their bounds, maps read shard by shard from the cache
``lock``           claiming a run directory
=================  ==========================================================================

The runner (:mod:`xaiarena.runner`) drives it; the functional API (:mod:`xaiarena.api`) calls
``batching`` directly. Components (data, models, explainers, metrics) never import it. This
package's ``__init__`` imports nothing, so importing one of its modules loads only that
module's own dependencies.
"""

r"""A worked example of your own tasks and model in `ewc run` (docs/own-model.md).

``blobs.tasks`` builds a stream of 2-D Gaussian blobs, two classes per task, and
``model.make_model`` a small MLP::

    cd examples
    ewc run benchmark.factory=own_tasks.blobs:tasks model.factory=own_tasks.model:make_model \
        benchmark.scenario=class training.epochs=5 training.eval_every=10
"""

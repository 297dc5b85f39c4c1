"""Speed and resource measurements: every measuring tool of the suite lives here.

Entry points (each ``python -m benchmark.speed.<module>``; ``python -m benchmark kernels``
is ``kernel_bench``):

* ``kernel_bench``: the MoE expert linear against its baselines, per provider, shape and direction;
* ``method_bench``: training-step and eval-forward time of DiT, DTR and Switch-DiT;
* ``gpu_check``: the one-shot GPU acceptance run (correctness, benchmark, steps, tile sweep);
* ``step_probe``: the whole-step goal taken apart (batch sizes, torch.compile, gradient tiles);
* ``compile_check``: the kernels compiled for sm_90 on a CPU (registers, spills, shared memory);
* ``passes``: elementwise passes over the activations per training step.

They share one timer (``timing``), one record writer (``records``, hardware and git state
from ``benchmark.provenance``), one shape grid (``shapes``) and goals kept as data
(``goals``, read from ``conf/speed/goals.json``). Nothing on the import path of
``gpu_check`` needs more than torch and Triton, so it runs on a bare GPU machine.
"""

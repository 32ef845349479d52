"""Small reference models used by ``fastgrad demo``, the benchmarks and the tests.

Importing this package is cheap: nothing is compiled until a model's numba
function is first called.

Modules
-------
mlp
    A from-scratch two-layer tanh/softmax MLP with a mean cross-entropy loss, a
    numba-compiled flat-vector loss, a plain NumPy loss, hand-written backprop and
    a deliberately buggy backprop (``grad_buggy``) for demonstrations.
"""

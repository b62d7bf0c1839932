"""The pytest plugin (registered through the ``pytest11`` entry point).

Options: ``--contracts-profile ci|dev|thorough`` (default ``ci``: few examples, fixed seed,
no ``torch.compile``), ``--contracts-max-examples N``, ``--contracts-seed N`` (``-1``: random),
``--contracts-no-shrink``, ``--contracts-compile``.  The same names without the ``--contracts-``
prefix are accepted by :func:`kernel_contracts.check`.
"""

from __future__ import annotations


def pytest_addoption(parser) -> None:
    group = parser.getgroup("kernel-contracts", "kernel plugin contract tests")
    group.addoption("--contracts-profile", choices=("ci", "dev", "thorough"), default=None,
                    help="search budget for contract tests (default: ci)")
    group.addoption("--contracts-max-examples", type=int, default=None,
                    help="Hypothesis examples per contract (overrides the profile)")
    group.addoption("--contracts-seed", type=int, default=None,
                    help="seed for the example search (-1 for a random seed each run)")
    group.addoption("--contracts-no-shrink", action="store_true", default=False,
                    help="report the first falsifying example without shrinking it")
    group.addoption("--contracts-compile", action="store_true", default=False,
                    help="also run the torch.compile(fullgraph=True) contracts")


def pytest_configure(config) -> None:
    from kernel_contracts.engine import set_session_options

    seed = config.getoption("--contracts-seed")
    options = {
        "profile": config.getoption("--contracts-profile"),
        "max_examples": config.getoption("--contracts-max-examples"),
        "compile": True if config.getoption("--contracts-compile") else None,
        "shrink": False if config.getoption("--contracts-no-shrink") else None,
    }
    set_session_options(**options)
    if seed is not None:
        set_session_options(seed=None if seed < 0 else seed)
        if seed < 0:
            from kernel_contracts.engine import _session_options

            _session_options["seed"] = None


def pytest_report_header(config) -> str:
    from kernel_contracts.engine import resolve_options

    opts = resolve_options()
    return (f"kernel-contracts: profile={opts['profile']} max_examples={opts['max_examples']} "
            f"seed={opts['seed']} compile={opts['compile']}")

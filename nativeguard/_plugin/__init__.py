"""The pytest plugin's parts, behind the hooks in :mod:`nativeguard.pytest_plugin`.

As pytest-memray splits its ``plugin.py`` (hooks) from ``marks.py``: ``marks``
parses ``@pytest.mark.no_leaks`` and ``--nativeguard-repeat``; ``checker``
holds the session state and the :class:`LeakChecker` a test is judged by;
``frames`` clears the test's own finished frames before a verdict.
"""

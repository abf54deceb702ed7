"""The command line's work: ``nativeguard demo`` (``demo``) and ``nativeguard soak``
(``soak``, ``soak_run``, ``soak_report``). ``nativeguard/__main__.py`` parses the
arguments and imports these only for the command that runs, so the SDKs load only then.
"""

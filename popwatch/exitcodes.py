"""Process exit statuses, after sysexits(3), shared by every command.

popwatch commands return one of these from ``main(argv)``; systemd's ``RestartPreventExitStatus=78``
relies on EX_CONFIG meaning "the configuration is wrong, restarting will not help".
"""

EX_OK = 0
EX_NOTFOUND = 1  # e.g. ``delete`` of an address that is not in the table (postmap -q style)
EX_SOFTWARE = 70  # an internal error or a supervised thread died: let systemd restart us
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78

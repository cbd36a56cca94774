# Python 2.7: run by install.sh's venv as `python wstest_loopback.py <wstest args>`.
#
# Same as the `wstest` entry point, except that every listening socket is
# bound to 127.0.0.1: upstream's listenWS() and the report web server bind
# to all interfaces ('') and offer no option to change that.
import sys

from autobahntestsuite import choosereactor  # noqa: F401  (installs the reactor; must come first)
from twisted.internet import reactor

_listenTCP = reactor.listenTCP


def _listen_loopback(port, factory, backlog=50, interface=''):
    return _listenTCP(port, factory, backlog, interface or '127.0.0.1')


reactor.listenTCP = _listen_loopback

from autobahntestsuite.wstest import run  # noqa: E402

if __name__ == '__main__':
    sys.argv[0] = 'wstest'
    sys.exit(run())

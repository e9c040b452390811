"""The Omnivox engine: loads a Lyra checkpoint and answers turns. Never imports Qt."""

import logging

# bitsandbytes warns at import, on every CPU start, that an optional kernel from the hub is not
# installed; nothing a user can act on, and it must not appear before the first import of it.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)

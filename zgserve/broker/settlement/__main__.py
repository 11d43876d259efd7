"""``python -m zgserve.broker.settlement <command>``: the ``zgserve settle`` commands on their own."""

from __future__ import annotations

import logging
import os

from zgserve.broker.settlement.cli import settle_app

if __name__ == "__main__":
    logging.basicConfig(
        level=os.environ.get("ZGSERVE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settle_app()

"""The sources' scheduled syncs, run in the background by the server (URBIS_SOURCES_SCHEDULER)."""

from __future__ import annotations

import asyncio
import logging

from urbis.connectors.sync import SyncManager

log = logging.getLogger("urbis")
SCHEDULER_PERIOD = 15.0  # seconds between two looks at the sources' schedules


async def run_scheduler(manager: SyncManager, period: float = SCHEDULER_PERIOD) -> None:
    """Run due scheduled syncs, one at a time, in worker threads, until cancelled."""
    while True:
        try:
            for source_id in await asyncio.to_thread(manager.due):
                report = await asyncio.to_thread(manager.sync, source_id)
                log.info(
                    "scheduled sync of %s: %s (created %d, updated %d, removed %d, quarantined %d)",
                    source_id,
                    report.status,
                    report.created,
                    report.updated,
                    report.removed,
                    report.quarantined,
                )
        except asyncio.CancelledError:
            raise
        except Exception:  # a broken source must never stop the scheduler
            log.exception("scheduled sync failed")
        await asyncio.sleep(period)

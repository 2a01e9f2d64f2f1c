"""kill -9 at any point loses no picture and stores none twice, through the Discord protocol peer.

The bot runs as a real process (`python -m bot run`'s code, tiny models) against the local Discord
peer in this test's event loop, and is SIGKILLed in the middle of a burst of posts: some pictures are
then analysed and stored, some only accepted, some half-way, and the last ones may have reached the
bot without being written down at all. More pictures are posted while it is down. After a restart
every picture must be stored exactly once: resumed from the ledger, or found again by reading the
channel's history after its mark.
"""

from __future__ import annotations

import signal

import pytest

from bot.config import load_settings
from bot.ingest.ledger import IngestLedger
from bot.memory.store import Audience, ImageStore
from cogs.images import SEEN_REACTION
from tests.harness.bot_process import start_bot_process, stop_bot_process, write_bot_config
from tests.helpers import reacted


@pytest.mark.parametrize("kill_after", [1, 5])
async def test_kill_minus_nine_mid_burst_then_restart_stores_every_picture_once(
        kill_after, discord_server, discord_world, tiny_models_dir, tmp_path, photos):
    server, world = discord_server, discord_world
    config = write_bot_config(tiny_models_dir, tmp_path)
    log = tmp_path / "bot.log"
    names = sorted(photos)
    posted = []

    async def post(index: int):
        message = await server.post_message(world.general, world.alice if index % 2 else world.bob, "",
                                            attachments=[(f"p{index}.jpg", photos[names[index % len(names)]],
                                                          "image/jpeg")])
        posted.append(message)
        return message

    bot = start_bot_process(server, config, log)
    try:
        await server.wait_for_gateway(timeout=120)
        first = await post(0)  # the channel gets its mark
        await server.wait_until(lambda: reacted(server, first, SEEN_REACTION), timeout=120, what="the first picture")
        for index in range(1, 9):
            await post(index)
            if index == kill_after:
                bot.send_signal(signal.SIGKILL)  # mid-burst: whatever the bot was doing
        bot.wait(30)
        for index in range(9, 12):  # posted while the bot is down
            await post(index)

        bot = start_bot_process(server, config, log)
        await server.wait_until(lambda: all(reacted(server, m, SEEN_REACTION) for m in posted), timeout=180,
                                what="👀 on every picture after the restart")
        # The ledger (sqlite, safe to read beside the bot) is empty once every picture is stored complete.
        ledger = IngestLedger.open(load_settings(config, environ={}))
        await server.wait_until(lambda: not any(ledger.counts().values()), timeout=180,
                                what="an empty ledger: every record complete")
        ledger.close()
    finally:
        stop_bot_process(bot)
    records = _records(load_settings(config, environ={}), world.guild.id)
    ids = [record.ref.attachment_id for record in records]
    assert sorted(ids) == sorted(m.attachments[0].id for m in posted)  # each exactly once
    assert not any(record.caption_pending for record in records)
    output = log.read_text(errors="replace")
    assert "Traceback" not in output
    assert "caught up on" in output  # the pictures posted while it was down came from the history


def _records(settings, guild_id):
    # Only once the bot has exited: embedded Chroma keeps its index in the writing process's memory.
    store = ImageStore.open(settings)
    return store.images(Audience.everything(guild_id))

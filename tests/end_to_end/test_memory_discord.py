"""Image memory through the Discord protocol peer: /find, Find similar, /forget, chat search, delete and
edit sync, replay idempotency, crash resume, and the privacy boundary (guild, channel, NSFW, DMs)."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime

from PIL import Image

from cogs.images import SEEN_REACTION
from tests.harness.discord_models import Perm, PermissionOverwrite
from tests.helpers import post_image, run_find, store_count, thumbnails, url_of, wait_reaction


def every_text(message) -> str:
    return message.all_text()


async def test_find_respects_guild_channel_and_nsfw_boundaries(imagebot, discord_server, discord_world, photos):
    server, world = discord_server, discord_world
    public = await post_image(server, world.general, world.alice, "astronaut", photos["astronaut"])
    secret = await post_image(server, world.secret, world.bob, "chelsea", photos["chelsea"])
    adult = await post_image(server, world.nsfw, world.bob, "coffee", photos["coffee"])
    other_guild = server.add_guild("Elsewhere")
    server.add_member(other_guild, world.alice)
    elsewhere_channel = server.add_text_channel(other_guild, "lobby")
    elsewhere = await post_image(server, elsewhere_channel, world.alice, "rocket", photos["rocket"])
    url = {m.id: m.attachments[0].url for m in (public, secret, adult, elsewhere)}

    # alice cannot open #secret: she never sees bob's picture there, not even as a thumbnail or caption.
    seen_by_alice = await run_find(server, world.general, world.alice, "a picture")
    assert thumbnails(seen_by_alice) == {url[public.id]}
    secret_caption = imagebot.services.cache.get(secret.attachments[0].id).caption
    assert str(secret.id) not in every_text(seen_by_alice) and url[secret.id] not in every_text(seen_by_alice)
    assert seen_by_alice.ephemeral

    # bob can open #secret, so he sees it; the NSFW image stays hidden outside the NSFW channel.
    seen_by_bob = await run_find(server, world.general, world.bob, "a picture")
    assert thumbnails(seen_by_bob) == {url[public.id], url[secret.id]}
    assert secret_caption in every_text(seen_by_bob)
    in_nsfw = await run_find(server, world.nsfw, world.bob, "a picture")
    assert url[adult.id] in thumbnails(in_nsfw)

    # The other guild's picture never crosses over, and vice versa.
    assert url[elsewhere.id] not in thumbnails(seen_by_bob) | thumbnails(in_nsfw)
    from_elsewhere = await run_find(server, elsewhere_channel, world.alice, "a picture")
    assert thumbnails(from_elsewhere) == {url[elsewhere.id]}


async def test_visibility_is_checked_at_query_time(imagebot, discord_server, discord_world, photos):
    server, world = discord_server, discord_world
    secret = await post_image(server, world.secret, world.bob, "chelsea", photos["chelsea"])
    assert url_of(secret) in thumbnails(await run_find(server, world.general, world.bob, "cat"))
    # bob loses access to #secret after the image was stored: it disappears from his results.
    server.update_channel(world.secret, overwrites=[PermissionOverwrite(id=world.guild.id, type=0,
                                                                        deny=Perm.VIEW_CHANNEL)])
    await server.wait_until(lambda: len(imagebot.get_channel(world.secret.id).overwrites) == 1,
                            what="the bot saw the permission change")
    assert url_of(secret) not in thumbnails(await run_find(server, world.general, world.bob, "cat"))


async def test_dm_find_shows_only_your_own_dm_images(imagebot, discord_server, discord_world, photos):
    server, world = discord_server, discord_world
    await post_image(server, world.general, world.alice, "astronaut", photos["astronaut"])
    alice_dm = await server.post_dm(world.alice, "", attachments=[("cat.jpg", photos["chelsea"], "image/jpeg")])
    await wait_reaction(server, alice_dm, SEEN_REACTION)
    bob_dm = await server.post_dm(world.bob, "", attachments=[("mug.jpg", photos["coffee"], "image/jpeg")])
    await wait_reaction(server, bob_dm, SEEN_REACTION)
    await server.wait_for_message(server.dm_channel(world.bob), timeout=20)  # the DM chat answer
    found = await run_find(server, server.dm_channel(world.alice), world.alice, "a picture")
    assert thumbnails(found) == {url_of(alice_dm)}


async def test_find_similar_puts_the_same_photo_first(imagebot, discord_server, discord_world, photos):
    server, world = discord_server, discord_world
    originals = {name: await post_image(server, world.general, world.alice, name, photos[name])
                 for name in ("astronaut", "chelsea", "coffee", "rocket")}
    # The same photo again, smaller and recompressed: CLIP image→image must find the original first.
    buffer = io.BytesIO()
    Image.open(io.BytesIO(photos["coffee"])).resize((300, 200)).save(buffer, "JPEG", quality=70)
    again = await post_image(server, world.general, world.bob, "coffee-small", buffer.getvalue())
    ix = await server.invoke_message_command(world.general, world.bob, "Find similar", again)
    result = await server.wait_for_message(predicate=lambda m: m.interaction is ix, timeout=20)
    assert result.embeds[0]["thumbnail"]["url"] == url_of(originals["coffee"])
    assert url_of(again) not in thumbnails(result)


async def test_filters_and_paging(imagebot, discord_server, discord_world, photos):
    server, world = discord_server, discord_world
    for index in range(6):
        await post_image(server, world.general, world.alice if index % 2 else world.bob, f"p{index}",
                         photos[("astronaut", "chelsea", "coffee")[index % 3]])
    only_alice = await run_find(server, world.general, world.bob, "picture", author=world.alice)
    assert len(only_alice.embeds) == 3
    assert all(f"<@{world.alice.id}>" in e["description"] for e in only_alice.embeds)
    everything = await run_find(server, world.general, world.bob, "picture")
    assert len(everything.embeds) == 4 and "results:next" in everything.custom_ids()
    await server.click_button(everything, "results:next", world.bob)
    await server.wait_until(lambda: len(everything.embeds) == 2, what="second page")
    bad = await server.invoke_slash_command(world.general, world.bob, "find", {"query": "x", "since": "last tuesday"})
    response = await server.wait_for_response(bad)
    assert "since" in response.data["content"] and response.data["flags"] & 64


async def test_deletes_and_edits_remove_records(imagebot, discord_server, discord_world, photos):
    server, world = discord_server, discord_world
    guild = world.guild.id
    one = await post_image(server, world.general, world.alice, "a", photos["astronaut"])
    two = await server.post_message(world.general, world.alice, "", attachments=[
        ("b.jpg", photos["chelsea"], "image/jpeg"), ("c.jpg", photos["coffee"], "image/jpeg")])
    await wait_reaction(server, two, SEEN_REACTION)
    three = await post_image(server, world.general, world.bob, "d", photos["rocket"])
    four = await post_image(server, world.general, world.bob, "e", photos["astronaut"])
    assert store_count(imagebot, guild) == 5

    await server.delete_message(one)
    await server.wait_until(lambda: store_count(imagebot, guild) == 4, what="delete sync")
    await server.edit_message(two, attachments=[two.attachments[1]])  # "b.jpg" removed by an edit
    await server.wait_until(lambda: store_count(imagebot, guild) == 3, what="edit sync")
    await server.bulk_delete_messages([three, four])
    await server.wait_until(lambda: store_count(imagebot, guild) == 1, what="bulk delete sync")


async def test_replayed_message_is_stored_once(imagebot, discord_server, discord_world, photos):
    server, world = discord_server, discord_world
    message = await post_image(server, world.general, world.alice, "a", photos["astronaut"])
    for _ in range(2):  # the gateway delivers the same event again (replay after a reconnect)
        server._dispatch_message("MESSAGE_CREATE", message)
    # Gateway events are handled in order: once a later picture is seen, the replays were processed.
    await post_image(server, world.general, world.bob, "b", photos["rocket"])
    await server.wait_until(lambda: imagebot.services.backlog.idle, timeout=20, what="the backlog drained")
    assert store_count(imagebot, world.guild.id) == 2


async def test_forget_asks_first_and_reports_the_count(imagebot, discord_server, discord_world, photos):
    server, world = discord_server, discord_world
    await post_image(server, world.general, world.alice, "a", photos["astronaut"])
    await post_image(server, world.general, world.alice, "b", photos["chelsea"])
    await post_image(server, world.general, world.bob, "c", photos["coffee"])
    ix = await server.invoke_slash_command(world.general, world.alice, "forget")
    prompt = await server.wait_for_message(predicate=lambda m: m.interaction is ix, timeout=10)
    assert "Continue?" in prompt.content and prompt.ephemeral
    await server.click_button(prompt, "forget:yes", world.alice)
    await server.wait_until(lambda: "forgot 2 picture(s)" in prompt.content, what="forget result")
    assert store_count(imagebot, world.guild.id) == 1

    ix = await server.invoke_slash_command(world.general, world.bob, "forget")
    prompt = await server.wait_for_message(predicate=lambda m: m.interaction is ix, timeout=10)
    await server.click_button(prompt, "forget:no", world.bob)
    await server.wait_until(lambda: "Nothing was forgotten" in prompt.content, what="cancel")
    assert store_count(imagebot, world.guild.id) == 1


async def test_taken_back_while_being_analysed_is_never_stored(imagebot, discord_server, discord_world, photos):
    """Delete, edit away or /forget an image while the bot is still downloading/analysing it: the
    delete finds nothing in the store yet, so the bot must drop the image when its analysis lands."""
    server, world = discord_server, discord_world
    guild, memory = world.guild.id, imagebot.services.memory
    kept = await post_image(server, world.general, world.alice, "kept", photos["rocket"])
    assert store_count(imagebot, guild) == 1

    server.cdn_hold = asyncio.Event()  # every download waits from here on
    deleted = await server.post_message(world.general, world.alice, "", attachments=[
        ("a.jpg", photos["astronaut"], "image/jpeg")])
    edited = await server.post_message(world.general, world.alice, "", attachments=[
        ("b.jpg", photos["chelsea"], "image/jpeg"), ("c.jpg", photos["coffee"], "image/jpeg")])
    forgotten = await server.post_message(world.general, world.bob, "", attachments=[
        ("d.jpg", photos["astronaut"], "image/jpeg")])
    await server.wait_until(lambda: server.cdn_waiting == 4, what="four downloads under way")
    b_jpg, c_jpg = (attachment.id for attachment in edited.attachments)
    taken_back = {deleted.attachments[0].id, b_jpg, forgotten.attachments[0].id}

    await server.delete_message(deleted)
    await server.edit_message(edited, attachments=[edited.attachments[1]])  # b.jpg removed
    ix = await server.invoke_slash_command(world.general, world.bob, "forget")
    prompt = await server.wait_for_message(predicate=lambda m: m.interaction is ix, timeout=10)
    await server.click_button(prompt, "forget:yes", world.bob)
    await server.wait_until(lambda: "forgot 0 picture(s)" in prompt.content, what="forget result")
    await server.wait_until(lambda: memory.retracted >= taken_back, what="delete, edit and /forget handled")

    server.cdn_hold.set()
    await server.wait_until(lambda: imagebot.services.backlog.idle, timeout=30, what="all four handled")
    await server.wait_until(lambda: not memory.retracted, what="ingest settled")
    stored = memory.store.store.get(guild, [kept.attachments[0].id, *taken_back, c_jpg])
    assert set(stored) == {kept.attachments[0].id, c_jpg}
    assert await memory.pending() == []  # nor resumed after a restart


async def test_plain_chat_request_searches_only_what_everyone_here_may_see(imagebot, discord_server,
                                                                          discord_world, photos, ollama):
    server, world = discord_server, discord_world
    mine = await post_image(server, world.general, world.alice, "astronaut", photos["astronaut"])
    await post_image(server, world.secret, world.bob, "chelsea", photos["chelsea"])
    await server.post_message(world.general, world.bob,
                              f"<@{server.bot_user.id}> show me the pictures from today")
    reply = await server.wait_for_message(world.general, predicate=lambda m: m.embeds, timeout=20)
    # bob may see #secret, but this reply is public in #general: #secret's picture stays out.
    assert thumbnails(reply) == {url_of(mine)}
    assert ollama.requests == []  # a search, not a chat


async def test_interrupted_ingest_is_resumed_on_start(discord_server, discord_world, tiny_settings, analyzer, ollama,
                                                     tmp_path, photos):
    from bot.client import ImageBot
    from bot.ingest.ledger import IngestLedger, ledger_path
    from bot.memory.records import ImageRef
    from bot.services import Services
    from tests.harness.fixtures import make_fast, running_bot
    from tests.imagebot_fixtures import bot_settings

    server, world = discord_server, discord_world
    settings = bot_settings(tiny_settings, ollama, tmp_path)
    # A message whose image was marked pending when the process died (posted while the bot was down).
    message = await server.post_message(world.general, world.alice, "",
                                        attachments=[("cat.jpg", photos["chelsea"], "image/jpeg")])
    attachment = message.attachments[0]

    ref = ImageRef(
        attachment_id=attachment.id, message_id=message.id, channel_id=world.general.id, guild_id=world.guild.id,
        author_id=world.alice.id, jump_url=f"https://discord.com/channels/{world.guild.id}/{world.general.id}/"
        f"{message.id}", attachment_url=attachment.url, filename=attachment.filename, created_at=datetime.now(UTC),
    )
    with IngestLedger(ledger_path(settings)) as ledger:
        ledger.mark_pending(ref)
    bot = ImageBot(settings, Services(settings, analyzer_factory=lambda: analyzer))
    make_fast(bot)
    async with running_bot(server, bot):
        await server.wait_until(lambda: bot.services.memory is not None and store_count(bot, world.guild.id) == 1
                                and not bot.services.memory.ledger.pending(), timeout=20, what="resumed image stored")


async def test_a_channel_made_nsfw_later_hides_its_older_pictures(imagebot, discord_server, discord_world, photos):
    server, world = discord_server, discord_world
    posted = await post_image(server, world.general, world.alice, "astronaut", photos["astronaut"])
    lounge = server.add_text_channel(world.guild, "lounge")
    before = await post_image(server, lounge, world.alice, "chelsea", photos["chelsea"])
    assert url_of(before) in thumbnails(await run_find(server, world.general, world.bob, "picture"))
    server.update_channel(lounge, nsfw=True)  # age-restricted after the picture was stored
    await server.wait_until(lambda: imagebot.get_channel(lounge.id).is_nsfw(), what="the bot saw the change")
    assert thumbnails(await run_find(server, world.general, world.bob, "picture")) == {url_of(posted)}

"""/stats, /gallery, /index and /topics end to end: the real ImageBot (tiny models) against the Discord
protocol peer. The tiny models give random captions and labels, so the assertions compare what the bot
shows with what its own store holds (structure, counts, privacy), never with what a picture shows."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from bot.memory.records import StoredImage
from bot.memory.store import Audience
from bot.overview.charts import stats_charts
from bot.overview.paths import topic_model_path
from bot.overview.stats import compute_stats
from bot.overview.topics import load_topic_model
from cogs.overview import NOT_ADMIN, POSTED
from tests.harness.discord_models import Perm
from tests.helpers import command, count_bars, post_image, thumbnails

TIMEOUT = 30.0


def memory_store(bot):
    return bot.services.memory.store.store


def records(bot, guild_id: int, messages) -> list[StoredImage]:
    ids = [a.id for m in messages for a in m.attachments]
    found = memory_store(bot).get(guild_id, ids)
    assert len(found) == len(ids), "every posted picture should be stored"
    return list(found.values())


async def captions_written(server, bot, messages) -> None:
    """Wait until every picture of ``messages`` has its caption: a picture is seen (👀) after its first
    look (labels, CLIP), its caption may land later and change its mood, so tests that compare what the
    bot shows with the store wait for the complete records first."""
    by_guild: dict[int, set[int]] = {}
    for message in messages:
        by_guild.setdefault(message.channel.guild.id, set()).update(a.id for a in message.attachments)
    await server.wait_until(lambda: all(memory_store(bot).has(guild, ids, captioned=True) == ids
                                        for guild, ids in by_guild.items()),
                            timeout=TIMEOUT, what="every caption written")


def assert_charts_match(reply, images: list[StoredImage]) -> None:
    """The PNGs the bot attached draw exactly the bars the same records give (counted by colour)."""
    expected = stats_charts(compute_stats(images, since=None, now=datetime.now(UTC)))
    assert sorted(reply.files) == sorted(chart.filename for chart in expected)
    for chart in expected:
        assert reply.files[chart.filename].startswith(b"\x89PNG")
        for series, colour in chart.colours.items():
            assert count_bars(reply.files[chart.filename], colour, chart) == chart.bars(series), (
                chart.filename, series)


# --------------------------------------------------------------------------- /stats


async def test_stats_charts_count_only_what_the_requester_may_see(imagebot, discord_server, discord_world, photos):
    server, world = discord_server, discord_world
    mine = [await post_image(server, world.general, world.alice, name, photos[name])
            for name in ("astronaut", "rocket")]
    secret = await post_image(server, world.secret, world.bob, "chelsea", photos["chelsea"])
    adult = await post_image(server, world.nsfw, world.bob, "coffee", photos["coffee"])
    guild = world.guild.id
    await captions_written(server, imagebot, [*mine, secret, adult])

    _, for_alice = await command(server, world.general, world.alice, "stats")
    assert for_alice.ephemeral and len(for_alice.embeds) == 4
    assert "**2 picture(s)** in 1 channel(s), all time." in for_alice.embeds[0]["description"]
    assert [e["image"]["url"] for e in for_alice.embeds] == [f"attachment://{name}" for name in (
        "stats-mood.png", "stats-topics.png", "stats-labels.png", "stats-posters.png")]
    assert f"1. <@{world.alice.id}> — 2 (100%)" in for_alice.embeds[3]["description"]
    assert f"<@{world.bob.id}>" not in for_alice.all_text()  # bob's pictures are in channels alice can't see
    assert_charts_match(for_alice, records(imagebot, guild, mine))

    _, for_bob = await command(server, world.general, world.bob, "stats")
    assert "**3 picture(s)** in 2 channel(s)" in for_bob.embeds[0]["description"]  # #secret yes, NSFW no
    assert_charts_match(for_bob, records(imagebot, guild, [*mine, secret]))
    _, in_nsfw = await command(server, world.nsfw, world.bob, "stats", author=world.bob)
    assert f"**2 picture(s)** in 2 channel(s), by <@{world.bob.id}> all time." in in_nsfw.embeds[0]["description"]
    assert_charts_match(in_nsfw, records(imagebot, guild, [secret, adult]))
    _, one_channel = await command(server, world.general, world.bob, "stats", channel=world.secret, period="week")
    assert f"**1 picture(s)** in 1 channel(s), in <#{world.secret.id}> in the last 7 days." in one_channel.all_text()

    # public:True posts in the channel, and counts only what everyone there may see: not #secret.
    ix, placeholder = await command(server, world.general, world.bob, "stats", public=True)
    posted = await server.wait_for_followup(ix, 1, timeout=TIMEOUT)
    assert placeholder.ephemeral and placeholder.content == POSTED
    assert not posted.ephemeral and posted.channel is world.general
    assert "**2 picture(s)** in 1 channel(s)" in posted.embeds[0]["description"]
    assert_charts_match(posted, records(imagebot, guild, mine))

    other = server.add_guild("Elsewhere")
    server.add_member(other, world.alice)
    lobby = server.add_text_channel(other, "lobby")
    await server.wait_until(lambda: imagebot.get_channel(lobby.id) is not None, what="the bot saw the new guild")
    _, empty = await command(server, lobby, world.alice, "stats")
    assert empty.ephemeral and "No pictures match" in empty.content and not empty.files


# --------------------------------------------------------------------------- /gallery


def footers(message) -> list[str]:
    return [embed["footer"]["text"] for embed in message.embeds]


async def test_gallery_pages_sorts_and_filters_within_the_privacy_rules(imagebot, discord_server, discord_world,
                                                                        photos):
    server, world = discord_server, discord_world
    names = ("astronaut", "chelsea", "coffee", "rocket", "china", "flower")
    posted = [await post_image(server, world.general, world.alice if i % 2 else world.bob, name, photos[name])
              for i, name in enumerate(names)]
    hidden = await post_image(server, world.secret, world.bob, "hidden", photos["astronaut"])
    url = [m.attachments[0].url for m in posted]
    await captions_written(server, imagebot, [*posted, hidden])

    _, newest = await command(server, world.general, world.alice, "gallery")
    assert newest.ephemeral and newest.content.startswith("**6 picture(s)** · newest first")
    assert [e["thumbnail"]["url"] for e in newest.embeds] == url[::-1][:4]
    assert all("[jump to message](https://discord.com/channels/" in e["description"] for e in newest.embeds)
    assert footers(newest)[0] == "1 of 6" and "results:next" in newest.custom_ids()
    other = await server.click_button(newest, "results:next", world.bob)  # not bob's gallery
    assert "belong to someone else" in (await server.wait_for_response(other)).data["content"]
    await server.click_button(newest, "results:next", world.alice)
    await server.wait_until(lambda: len(newest.embeds) == 2, what="second page")
    assert thumbnails(newest) == set(url[:2]) and footers(newest) == ["5 of 6", "6 of 6"]
    assert hidden.attachments[0].url not in {u for m in server.sent_messages for u in thumbnails(m)}

    _, oldest = await command(server, world.general, world.alice, "gallery", sort="oldest", author=world.bob)
    assert [e["thumbnail"]["url"] for e in oldest.embeds] == url[0::2]  # bob's three, #secret's left out
    assert not oldest.custom_ids()  # one page: no buttons

    stored = memory_store(imagebot).get(world.guild.id, [m.attachments[0].id for m in posted])
    _, happiest = await command(server, world.general, world.alice, "gallery", sort="happiest")
    moods = [float(re.search(r"mood ([+-]\d\.\d\d)", f).group(1)) for f in footers(happiest)]
    assert moods == sorted(moods, reverse=True) and len(moods) == 4
    sentiment = stored[posted[0].attachments[0].id].sentiment
    expected = {image.ref.attachment_url for image in stored.values() if image.sentiment == sentiment}
    _, by_mood = await command(server, world.general, world.alice, "gallery", sentiment=sentiment)
    assert by_mood.content.startswith(f"**{len(expected)} picture(s)**") and thumbnails(by_mood) <= expected

    ac = await server.invoke_autocomplete(world.general, world.alice, "gallery", {"topic": "anim"}, "topic")
    await server.wait_for_response(ac)
    assert {c["value"] for c in ac.autocomplete_choices} == {"animals"}
    topic = stored[posted[1].attachments[0].id].topic
    _, by_topic = await command(server, world.general, world.alice, "gallery", topic=topic)
    assert f"topic: {topic}" in by_topic.content


# --------------------------------------------------------------------------- /index


async def test_index_and_topics_refresh_refuse_members_without_permissions(imagebot, discord_server,
                                                                           discord_world):
    server, world = discord_server, discord_world
    assert int(server.find_command("index")["default_member_permissions"]) == Perm.MANAGE_MESSAGES
    before = len(server.requests_to("GET", r"/channels/\d+/messages$"))
    ix = await server.invoke_slash_command(world.general, world.alice, "index")
    response = await server.wait_for_response(ix)
    assert response.data["content"] == NOT_ADMIN and response.data["flags"] & 64
    ix = await server.invoke_slash_command(world.general, world.alice, "topics refresh")
    assert (await server.wait_for_response(ix)).data["content"] == NOT_ADMIN
    # Manage Messages does not reach a channel the member cannot read.
    role = server.add_role(world.guild, "helpers", permissions=Perm.MANAGE_MESSAGES, members=[world.alice])
    await server.wait_until(lambda: imagebot.get_guild(world.guild.id).get_role(role.id), what="the bot saw the role")
    ix = await server.invoke_slash_command(world.general, world.alice, "index", {"channel": world.secret})
    assert (await server.wait_for_response(ix)).data["content"] == NOT_ADMIN
    assert len(server.requests_to("GET", r"/channels/\d+/messages$")) == before  # nothing was read


@contextlib.asynccontextmanager
async def imagebot_started_later(server, settings, analyzer) -> AsyncIterator[object]:
    """The production bot, started now (what was posted before happened while it was down)."""
    from bot.client import ImageBot
    from bot.services import Services
    from tests.harness.fixtures import make_fast, running_bot

    bot = ImageBot(settings, Services(settings, analyzer_factory=lambda: analyzer))
    make_fast(bot)
    async with running_bot(server, bot):
        bot.get_cog("Overview").service.backfill.progress_interval_s = 0.0  # edit after every message
        yield bot


PROGRESS = re.compile(r"Indexing <#\d+>… (\d+) / (\d+) messages read · (\d+) picture\(s\) found: (\d+) indexed, "
                      r"(\d+) already known, (\d+) failed · [\d.]+ messages/s · ETA ")


async def run_index(server, world, **options):
    ix = await server.invoke_slash_command(world.general, world.bob, "index", options)
    await server.wait_until(lambda: ix.edits and not PROGRESS.match(ix.edits[-1].get("content", "")),
                            timeout=TIMEOUT, what="the /index summary")
    progress = [PROGRESS.match(edit["content"]) for edit in ix.edits[:-1]]
    assert all(progress), ix.edits
    assert ix.original.ephemeral
    return [tuple(int(g) for g in p.groups()) for p in progress], ix.original.content


async def test_index_backfills_resumably_with_progress_and_adds_nothing_twice(
        discord_server, discord_world, tiny_settings, analyzer, ollama, tmp_path, photos):
    from tests.imagebot_fixtures import bot_settings

    server, world = discord_server, discord_world
    settings = bot_settings(tiny_settings, ollama, tmp_path)
    server.add_role(world.guild, "mods", permissions=Perm.MANAGE_MESSAGES, members=[world.bob])
    jpeg = "image/jpeg"
    # Posted while the bot was down: 3 good pictures in 2 messages, chatter, a broken file, one more picture.
    await server.post_message(world.general, world.alice, "", attachments=[("a.jpg", photos["astronaut"], jpeg)])
    await server.post_message(world.general, world.bob, "nice")
    await server.post_message(world.general, world.alice, "two", attachments=[("b.jpg", photos["chelsea"], jpeg),
                                                                              ("c.jpg", photos["coffee"], jpeg)])
    await server.post_message(world.general, world.bob, "", attachments=[("notes.png", b"just text", "image/png")])
    await server.post_message(world.general, world.bob, "", attachments=[("d.jpg", photos["rocket"], jpeg)])
    guild = world.guild.id

    async with imagebot_started_later(server, settings, analyzer) as bot:
        assert memory_store(bot).count(Audience.everything(guild)) == 0
        live = await post_image(server, world.general, world.alice, "china", photos["china"])  # seen live
        assert memory_store(bot).count(Audience.everything(guild)) == 1
        progress, summary = await run_index(server, world, limit=3)
        assert [p[0] for p in progress] == [0, 1, 2, 3] and {p[1] for p in progress} == {3}  # done / total
        assert progress[-1][3:] == (3, 0, 0)
        assert "Indexed the next 3 messages" in summary and "**3 indexed**, 0 skipped" in summary
        assert "Run `/index` again to continue" in summary
        assert memory_store(bot).count(Audience.everything(guild)) == 4

    # A new process (as after a crash or a restart): the cursor file says where to go on.
    async with imagebot_started_later(server, settings, analyzer) as bot:
        progress, summary = await run_index(server, world)
        assert progress[-1][:1] == (3,) and progress[-1][3:] == (1, 1, 1)  # after message 3: 3 more read
        assert "up to its newest message" in summary
        assert "**1 indexed**, 1 skipped (already known), 1 failed" in summary
        assert re.search(r"• 1 × .*notes\.png", summary), summary
        assert "All runs in this channel: 6 messages read, 4 indexed, 1 skipped, 1 failed." in summary
        assert memory_store(bot).count(Audience.everything(guild)) == 5
        stored_before = memory_store(bot).get(guild, [live.attachments[0].id])

        # Idempotent: nothing new since, nothing read or added; from the start, every picture is known.
        progress, summary = await run_index(server, world)
        assert progress == [(0, 1000, 0, 0, 0, 0)] and "**0 indexed**, 0 skipped" in summary
        _, summary = await run_index(server, world, from_start=True)
        assert "**0 indexed**, 5 skipped (already known), 1 failed" in summary
        assert memory_store(bot).count(Audience.everything(guild)) == 5
        assert memory_store(bot).get(guild, [live.attachments[0].id]) == stored_before
        assert not any(m.channel is world.general and not m.ephemeral for m in server.sent_messages
                       if m.interaction is not None)  # progress and summaries stay private


# --------------------------------------------------------------------------- /topics


async def test_topics_refresh_lists_and_browses_only_visible_topics(imagebot, discord_server, discord_world, photos):
    server, world = discord_server, discord_world
    role = server.add_role(world.guild, "mods", permissions=Perm.MANAGE_MESSAGES, members=[world.bob])
    posted = [await post_image(server, world.general, world.alice, name, photos[name])
              for name in ("astronaut", "chelsea", "coffee", "rocket", "china")]
    posted.append(await post_image(server, world.secret, world.bob, "flower", photos["flower"]))
    await server.wait_until(lambda: imagebot.get_guild(world.guild.id).get_role(role.id), what="the bot saw the role")
    await captions_written(server, imagebot, posted)  # topics cluster captions

    _, refreshed = await command(server, world.general, world.bob, "topics refresh")
    model = load_topic_model(topic_model_path(imagebot.settings, world.guild.id))
    assert model is not None and model.images == 6 and sum(c.size for c in model.clusters) == 6
    assert refreshed.ephemeral and f"Discovered {model.k} topic(s) in 6 picture(s)" in refreshed.content
    assert all(c.name in refreshed.content for c in model.clusters)  # bob can read every channel
    labels = set(imagebot.services.topics)
    assert all(c.label in labels for c in model.clusters)  # named by the nearest fixed topic too

    alice_channels = {world.general.id, world.nsfw.id}
    visible = model.visible(alice_channels, allow_nsfw=False)
    hidden = [c for c in model.clusters if c not in visible]
    assert hidden and all(world.secret.id in c.channels for c in hidden)
    ix = await server.invoke_slash_command(world.general, world.alice, "topics list")
    listed = (await server.wait_for_response(ix)).data["content"]
    assert all(c.name in listed for c in visible) and not any(f"**{c.name}**" in listed for c in hidden)

    ac = await server.invoke_autocomplete(world.general, world.alice, "gallery", {"topic": ""}, "topic")
    await server.wait_for_response(ac)
    values = {c["value"] for c in ac.autocomplete_choices}
    assert {c.value for c in visible} <= values and not {c.value for c in hidden} & values
    if visible:
        cluster = visible[0]
        _, gallery = await command(server, world.general, world.alice, "gallery", topic=cluster.value)
        urls = {image.ref.attachment_url for image in memory_store(imagebot).get(world.guild.id, cluster.members)
                .values()}
        assert thumbnails(gallery) <= urls and f"**{cluster.size} picture(s)**" in gallery.content
    # A hidden topic typed by hand shows nothing, not even that it exists.
    _, nothing = await command(server, world.general, world.alice, "gallery", topic=hidden[0].value)
    assert "No pictures match" in nothing.content and not nothing.embeds

"""End-to-end tests of the fake Discord server with the real, unmodified discord.py client.

Each test builds a tiny throwaway bot, runs it against ``FakeDiscordServer`` and checks
both what the bot saw (through discord.py's own objects) and what it did (through the
server's records).
"""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.harness.discord_models import CallbackType, MessageFlag, Perm
from tests.harness.discord_server import FakeDiscordServer, HarnessTimeout, HarnessWarning, tiny_png
from tests.harness.fixtures import BotRunner, DiscordWorld, bot_intents, make_bot, running_bot

PNG = tiny_png(4, 3, (10, 200, 30))


class Seen:
    """What the throwaway bot observed, for assertions from the test side."""

    def __init__(self) -> None:
        self.messages: list[discord.Message] = []
        self.attachment_bytes: list[bytes] = []
        self.edits: list[tuple[str, str]] = []
        self.deleted: list[int] = []
        self.bulk_deleted: list[set[int]] = []
        self.reactions: list[tuple[str, int]] = []
        self.resumed = 0
        self.history: list[list[int]] = []
        self.errors: list[BaseException] = []


class ButtonView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=30)

    @discord.ui.button(label="OK", custom_id="ok-button", style=discord.ButtonStyle.primary)
    async def ok(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content=f"clicked by {interaction.user.name}", view=None)

    @discord.ui.select(custom_id="pick", options=[discord.SelectOption(label=x, value=x) for x in ("cat", "dog")])
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select[Any]) -> None:
        await interaction.response.send_message(f"picked {select.values[0]}", ephemeral=True)


class NoteModal(discord.ui.Modal, title="Add a note"):
    note: discord.ui.TextInput[Any] = discord.ui.TextInput(label="Note", custom_id="note-text")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"noted: {self.note.value}")


def build_test_bot(seen: Seen, **kwargs: Any) -> commands.Bot:
    """A small bot exercising most of what the imagebot will use."""
    bot: commands.Bot = make_bot(**kwargs)

    @bot.event
    async def on_message(message: discord.Message) -> None:
        if message.author.bot:
            return
        seen.messages.append(message)
        if message.content.startswith("echo"):
            async with message.channel.typing():
                blobs = [await a.read() for a in message.attachments]
            seen.attachment_bytes.extend(blobs)
            files = [discord.File(io.BytesIO(b), filename=f"copy{i}.png") for i, b in enumerate(blobs)]
            embed = discord.Embed(title="Echo", description=message.content)
            await message.reply(f"echo: {message.content}", files=files, embed=embed, mention_author=False)
            await message.add_reaction("👍")
        elif message.content == "dm me":
            await message.author.send("psst")
        elif message.content.startswith("history"):
            _, anchor = message.content.split()
            before = [m.id async for m in message.channel.history(limit=3, before=discord.Object(int(anchor)))]
            after = [m.id async for m in message.channel.history(limit=2, after=discord.Object(int(anchor)))]
            seen.history.extend([before, after])
            await message.channel.send("history done")
        await bot.process_commands(message)

    @bot.event
    async def on_message_edit(before: discord.Message, after: discord.Message) -> None:
        seen.edits.append((before.content, after.content))

    @bot.event
    async def on_raw_message_delete(payload: discord.RawMessageDeleteEvent) -> None:
        seen.deleted.append(payload.message_id)

    @bot.event
    async def on_raw_bulk_message_delete(payload: discord.RawBulkMessageDeleteEvent) -> None:
        seen.bulk_deleted.append(set(payload.message_ids))

    @bot.event
    async def on_raw_reaction_add(payload: discord.RawReactionActionEvent) -> None:
        seen.reactions.append((str(payload.emoji), payload.user_id))

    @bot.event
    async def on_resumed() -> None:
        seen.resumed += 1

    @bot.tree.command(name="describe", description="Describe an image")
    @app_commands.describe(image="The picture", note="Optional note")
    async def describe(interaction: discord.Interaction, image: discord.Attachment, note: str = "") -> None:
        await interaction.response.send_message(f"got {image.filename} ({image.size} bytes) {note}".strip())
        data = await image.read()
        await interaction.followup.send("here it is", file=discord.File(io.BytesIO(data), filename="back.png"))
        await interaction.edit_original_response(content=f"done: {image.filename}")

    @bot.tree.command(name="slow", description="Defers, then answers")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await asyncio.sleep(0.05)
        await interaction.followup.send("late answer")

    @bot.tree.command(name="panel", description="Shows a button")
    async def panel(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("press it", view=ButtonView())

    @bot.tree.command(name="note", description="Opens a modal")
    async def note(interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(NoteModal())

    @bot.tree.command(name="search", description="Autocomplete demo")
    async def search(interaction: discord.Interaction, query: str) -> None:
        await interaction.response.send_message(f"searching {query}", ephemeral=True)

    @search.autocomplete("query")
    async def search_auto(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=f"{current}-{i}", value=f"{current}-{i}") for i in range(2)]

    vibe = app_commands.Group(name="vibe", description="Vibes")

    @vibe.command(name="compare", description="Compare two users")
    async def compare(interaction: discord.Interaction, first: discord.Member, second: discord.User) -> None:
        await interaction.response.send_message(f"{first.name} vs {second.name}")

    bot.tree.add_command(vibe)

    @bot.tree.context_menu(name="Caption this")
    async def caption(interaction: discord.Interaction, message: discord.Message) -> None:
        await interaction.response.send_message(f"caption for {message.id}: {message.content}", ephemeral=True)

    @bot.tree.context_menu(name="Profile")
    async def profile(interaction: discord.Interaction, user: discord.Member) -> None:
        card = discord.File(io.BytesIO(PNG), filename="card.png")
        await interaction.response.send_message(f"profile of {user.name}", file=card)

    @bot.tree.error
    async def on_tree_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        seen.errors.append(error)

    async def setup_hook() -> None:
        await bot.tree.sync()

    bot.setup_hook = setup_hook  # type: ignore[method-assign]
    return bot


@pytest.fixture
def seen() -> Seen:
    return Seen()


# ---------------------------------------------------------------------------- tests


async def test_connects_fast_and_caches_the_world(
    discord_server: FakeDiscordServer, discord_world: DiscordWorld
) -> None:
    w = discord_world
    bot = make_bot()
    started = time.monotonic()
    async with running_bot(discord_server, bot):
        assert time.monotonic() - started < 2.0
        assert bot.user is not None and bot.user.id == discord_server.bot_user.id
        assert bot.application_id == discord_server.application_id
        guild = bot.get_guild(w.guild.id)
        assert guild is not None and guild.me is not None
        assert {c.name for c in guild.text_channels} == {"general", "secret", "after-dark"}
        secret = guild.get_channel(w.secret.id)
        assert isinstance(secret, discord.TextChannel)
        alice, bob = guild.get_member(w.alice.id), guild.get_member(w.bob.id)
        assert alice is not None and bob is not None
        assert not secret.permissions_for(alice).view_channel
        assert secret.permissions_for(bob).view_channel
        assert secret.permissions_for(guild.me).view_channel
        nsfw = guild.get_channel(w.nsfw.id)
        assert isinstance(nsfw, discord.TextChannel) and nsfw.is_nsfw()
        assert discord_server.gateway.connections[0].heartbeats >= 1  # first beat right after HELLO


async def test_message_attachment_read_multipart_reply_typing_reaction(
    discord_server: FakeDiscordServer, discord_world: DiscordWorld, seen: Seen
) -> None:
    w = discord_world
    async with running_bot(discord_server, build_test_bot(seen)):
        posted = await discord_server.post_message(
            w.general, w.alice, "echo look", attachments=[("cat.png", PNG, "image/png")]
        )
        typing = await discord_server.wait_for_typing(w.general)
        reply = await discord_server.wait_for_message(w.general)
        await discord_server.wait_until(lambda: discord_server.reactions, what="a reaction")

    assert seen.attachment_bytes == [PNG]
    got = seen.messages[0]
    assert got.attachments[0].filename == "cat.png"
    assert got.attachments[0].content_type == "image/png"
    assert (got.attachments[0].width, got.attachments[0].height) == (4, 3)
    assert isinstance(got.author, discord.Member) and got.guild is not None

    assert reply.content == "echo: echo look"
    assert reply.reference is posted
    assert reply.files == {"copy0.png": PNG}
    assert reply.attachments[0].content_type == "image/png"
    assert reply.embeds[0]["title"] == "Echo"
    assert [t.channel_id for t in discord_server.typing_events] == [w.general.id]
    assert typing.user_id == discord_server.bot_user.id
    (reaction,) = discord_server.reactions
    assert (reaction.emoji, reaction.message_id, reaction.user_id) == ("👍", posted.id, discord_server.bot_user.id)
    assert reply in discord_server.history(w.general)
    # the multipart upload really came as files[n] + payload_json
    (upload,) = discord_server.requests_to("POST", rf"/channels/{w.general.id}/messages$")
    assert upload.files == [("copy0.png", PNG)]


async def test_command_sync_is_recorded(
    discord_server: FakeDiscordServer, discord_world: DiscordWorld, seen: Seen
) -> None:
    async with running_bot(discord_server, build_test_bot(seen)) as bot:
        assert discord_server.command_names() == {
            "describe",
            "slow",
            "panel",
            "note",
            "search",
            "vibe",
            "Caption this",
            "Profile",
        }
        describe = discord_server.find_command("describe")
        assert [(o["name"], o["type"], o.get("required", False)) for o in describe["options"]] == [
            ("image", 11, True),
            ("note", 3, False),
        ]
        assert discord_server.find_command("Caption this", type=3)["type"] == 3
        # guild-scoped sync goes to the guild variant of the route
        guild = discord.Object(discord_world.guild.id)
        bot.tree.copy_global_to(guild=guild)
        synced = await bot.tree.sync(guild=guild)
        assert {c.name for c in synced} == discord_server.command_names(discord_world.guild)
        assert discord_server.command_syncs[-1][0] == discord_world.guild.id


async def test_slash_command_response_followup_and_edit(
    discord_server: FakeDiscordServer, discord_world: DiscordWorld, seen: Seen
) -> None:
    w = discord_world
    async with running_bot(discord_server, build_test_bot(seen)):
        ix = await discord_server.invoke_slash_command(
            w.general, w.alice, "describe", {"note": "pls"}, attachments={"image": ("dog.png", PNG, "image/png")}
        )
        followup = await discord_server.wait_for_followup(ix)
        original = await discord_server.wait_for_edit(ix)

    assert ix.callback is not None and ix.callback.type == CallbackType.CHANNEL_MESSAGE
    assert ix.callback.data["content"] == f"got dog.png ({len(PNG)} bytes) pls"
    assert original.content == "done: dog.png"
    assert original.edit_history[0]["content"] == "done: dog.png"
    assert followup.files == {"back.png": PNG}
    assert followup.interaction is ix and followup.webhook_id == discord_server.application_id
    assert ix.messages == [original, followup]
    assert not seen.errors


async def test_deferred_response_then_followup_replaces_placeholder(
    discord_server: FakeDiscordServer, discord_world: DiscordWorld, seen: Seen
) -> None:
    w = discord_world
    async with running_bot(discord_server, build_test_bot(seen)):
        ix = await discord_server.invoke_slash_command(w.general, w.bob, "slow")
        msg = await discord_server.wait_for_message(w.general)
    assert ix.deferred and ix.response_type == CallbackType.DEFERRED_CHANNEL_MESSAGE
    assert msg is ix.original and msg.content == "late answer" and not msg.loading


async def test_subcommand_with_user_options_and_autocomplete(
    discord_server: FakeDiscordServer, discord_world: DiscordWorld, seen: Seen
) -> None:
    w = discord_world
    async with running_bot(discord_server, build_test_bot(seen)):
        await discord_server.invoke_slash_command(
            w.general, w.alice, "vibe compare", {"first": w.alice, "second": w.bob}
        )
        msg = await discord_server.wait_for_message(w.general)
        assert msg.content == "alice vs bob"

        auto = await discord_server.invoke_autocomplete(w.general, w.alice, "search", {"query": "ca"}, focused="query")
        await discord_server.wait_for_response(auto)
        assert auto.autocomplete_choices == [{"name": "ca-0", "value": "ca-0"}, {"name": "ca-1", "value": "ca-1"}]

        ix = await discord_server.invoke_slash_command(w.general, w.alice, "search", {"query": "cat"})
        reply = await discord_server.wait_for_message(w.general)
        assert reply.ephemeral and ix.ephemeral and reply.content == "searching cat"
        assert reply not in discord_server.history(w.general)

    with pytest.raises(ValueError, match="requires option"):
        await discord_server.invoke_slash_command(w.general, w.alice, "describe")
    with pytest.raises(LookupError):
        await discord_server.invoke_slash_command(w.general, w.alice, "nope")


async def test_buttons_selects_and_modals(
    discord_server: FakeDiscordServer, discord_world: DiscordWorld, seen: Seen
) -> None:
    w = discord_world
    async with running_bot(discord_server, build_test_bot(seen)):
        await discord_server.invoke_slash_command(w.general, w.alice, "panel")
        panel = await discord_server.wait_for_message(w.general)
        assert set(panel.custom_ids()) == {"ok-button", "pick"}

        pick = await discord_server.choose_select(panel, "pick", w.bob, ["dog"])
        picked = await discord_server.wait_for_message(w.general)
        assert picked.content == "picked dog" and picked.ephemeral and pick.responded

        click = await discord_server.click_button(panel, "ok-button", w.bob)
        await discord_server.wait_for_response(click)
        assert click.response_type == CallbackType.UPDATE_MESSAGE
        assert panel.content == "clicked by bob" and panel.components == []

        opener = await discord_server.invoke_slash_command(w.general, w.alice, "note")
        await discord_server.wait_for_response(opener)
        assert opener.modal is not None and opener.modal["title"] == "Add a note"
        await discord_server.submit_modal(opener, {"note-text": "hello modal"})
        noted = await discord_server.wait_for_message(w.general)
        assert noted.content == "noted: hello modal"


async def test_context_menus(discord_server: FakeDiscordServer, discord_world: DiscordWorld, seen: Seen) -> None:
    w = discord_world
    async with running_bot(discord_server, build_test_bot(seen)):
        target = await discord_server.post_message(w.general, w.bob, "a sunset photo")
        ix = await discord_server.invoke_message_command(w.general, w.alice, "Caption this", target)
        reply = await discord_server.wait_for_message(w.general)
        assert reply.content == f"caption for {target.id}: a sunset photo" and reply.ephemeral
        assert ix.original is reply

        await discord_server.invoke_user_command(w.general, w.alice, "Profile", w.bob)
        profile = await discord_server.wait_for_message(w.general)
        assert profile.content == "profile of bob" and profile.files == {"card.png": PNG}


async def test_direct_messages(discord_server: FakeDiscordServer, discord_world: DiscordWorld, seen: Seen) -> None:
    w = discord_world
    runner = BotRunner(discord_server, build_test_bot(seen), raise_bot_errors=False)
    async with runner:
        await discord_server.post_dm(w.alice, "echo private", attachments=[("p.png", PNG)])
        reply = await discord_server.wait_for_message(discord_server.dm_channel(w.alice))
        assert reply.content == "echo: echo private" and reply.guild is None
        assert isinstance(seen.messages[-1].channel, discord.DMChannel)
        assert seen.messages[-1].guild is None

        await discord_server.post_message(w.general, w.bob, "dm me")
        psst = await discord_server.wait_for_message(discord_server.dm_channel(w.bob))
        assert psst.content == "psst"

        shy = discord_server.add_user("shy", accepts_dms=False)
        discord_server.add_member(w.guild, shy)
        await discord_server.post_message(w.general, shy, "dm me")
        await discord_server.wait_until(lambda: runner.bot_errors, what="the on_message error")
    (record,) = runner.bot_errors
    assert record.exc_info is not None
    error = record.exc_info[1]
    assert isinstance(error, discord.Forbidden) and error.code == 50007


async def test_gateway_drop_resume_replays_missed_events(
    discord_server: FakeDiscordServer, discord_world: DiscordWorld, seen: Seen
) -> None:
    w = discord_world
    async with running_bot(discord_server, build_test_bot(seen)):
        await discord_server.drop_gateway(resume=True, wait=False)
        # posted while the socket is down: must be replayed on RESUME with the right seq
        await discord_server.post_message(w.general, w.alice, "echo while away")
        await discord_server.wait_until(lambda: seen.resumed, what="on_resumed")
        assert (await discord_server.wait_for_message(w.general)).content == "echo: echo while away"

        resume = [e for e in discord_server.connection_log() if e.kind == "resume"]
        assert len(resume) == 1 and resume[0].path == "/gateway-resume/" and resume[0].detail == "replayed=1"

        await discord_server.drop_gateway(resume=True, abrupt=True)
        await discord_server.post_message(w.general, w.alice, "echo after abrupt")
        assert (await discord_server.wait_for_message(w.general)).content == "echo: echo after abrupt"


async def test_gateway_invalidated_session_reidentifies(
    discord_server: FakeDiscordServer, discord_world: DiscordWorld, seen: Seen
) -> None:
    w = discord_world
    async with running_bot(discord_server, build_test_bot(seen)) as bot:
        started = time.monotonic()
        await discord_server.drop_gateway(resume=False)
        assert time.monotonic() - started < 2.0
        kinds = [e.kind for e in discord_server.connection_log()]
        assert kinds.count("identify") == 2 and "resume_rejected" in kinds
        await discord_server.wait_until(lambda: bot.is_ready() and bot.get_guild(w.guild.id), what="guild again")
        await discord_server.post_message(w.general, w.alice, "echo again")
        assert (await discord_server.wait_for_message(w.general)).content == "echo: echo again"

        discord_server.send_gateway_reconnect()
        await discord_server.wait_until(lambda: seen.resumed, what="resume after op 7")


async def test_history_edit_and_delete_events(
    discord_server: FakeDiscordServer, discord_world: DiscordWorld, seen: Seen
) -> None:
    w = discord_world
    posted = [await discord_server.post_message(w.general, w.bob, f"m{i}") for i in range(6)]
    async with running_bot(discord_server, build_test_bot(seen)):
        anchor = posted[3]
        await discord_server.post_message(w.general, w.alice, f"history {anchor.id}")
        await discord_server.wait_for_message(w.general)
        before, after = seen.history
        assert before == [posted[2].id, posted[1].id, posted[0].id]  # newest first
        assert after == [posted[4].id, posted[5].id]  # discord.py re-orders "after" oldest first

        live = await discord_server.post_message(w.general, w.alice, "typo")
        await discord_server.wait_until(lambda: any(m.id == live.id for m in seen.messages))
        await discord_server.edit_message(live, content="fixed")
        await discord_server.wait_until(lambda: seen.edits, what="on_message_edit")
        assert seen.edits == [("typo", "fixed")]

        await discord_server.delete_message(live)
        await discord_server.wait_until(lambda: live.id in seen.deleted, what="delete")
        await discord_server.bulk_delete_messages(posted[:2])
        await discord_server.wait_until(lambda: seen.bulk_deleted, what="bulk delete")
        assert seen.bulk_deleted == [{posted[0].id, posted[1].id}]

        await discord_server.add_reaction(posted[5], w.alice, "🔥")
        await discord_server.wait_until(lambda: seen.reactions, what="reaction add")
        assert seen.reactions == [("🔥", w.alice.id)]


async def test_intents_and_permissions_are_enforced(
    discord_server: FakeDiscordServer, discord_world: DiscordWorld
) -> None:
    w = discord_world
    hidden = discord_server.add_text_channel(w.guild, "staff", private_to=[w.bob], include_bot=False)
    bot = make_bot(intents=bot_intents(message_content=False, members=False))
    got: list[discord.Message] = []

    async def collect(message: discord.Message) -> None:
        got.append(message)

    bot.add_listener(collect, "on_message")
    async with running_bot(discord_server, bot):
        guild = bot.get_guild(w.guild.id)
        assert guild is not None and guild.get_member(w.alice.id) is None  # no members intent
        await discord_server.post_message(w.general, w.alice, "secret words")
        await discord_server.post_message(w.general, w.alice, f"hey {discord_server.bot_user.mention}")
        await discord_server.post_message(hidden, w.bob, "staff only")
        await discord_server.wait_until(lambda: len(got) >= 2, what="two messages")
        await asyncio.sleep(0.05)
        assert [m.content for m in got] == ["", f"hey {discord_server.bot_user.mention}"]

        channel = bot.get_channel(w.general.id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.Forbidden):
            await discord.PartialMessageable(state=bot._connection, id=hidden.id).send("hi")  # type: ignore[arg-type]
        with pytest.raises(discord.HTTPException, match="empty message"):
            await channel.send("   ")
        with pytest.raises(discord.HTTPException, match="Invalid Form Body"):
            await channel.send("x" * 2001)
    assert discord_server.permissions_for(hidden, w.alice) == 0
    assert discord_server.permissions_for(w.general, w.alice) & Perm.SEND_MESSAGES


async def _slow_command(interaction: discord.Interaction) -> None:
    await asyncio.sleep(0.3)
    await interaction.response.send_message("too late")


async def test_interaction_deadline(discord_server: FakeDiscordServer, discord_world: DiscordWorld) -> None:
    w = discord_world
    discord_server.interaction_deadline = 0.2
    discord_server.require_synced_commands = False  # the bot never syncs: option schema is inferred
    bot = make_bot()
    errors: list[BaseException] = []
    bot.tree.command(name="sleepy", description="too slow")(_slow_command)

    @bot.tree.error
    async def on_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        errors.append(error)

    async with running_bot(discord_server, bot):
        ix = await discord_server.invoke_slash_command(w.general, w.alice, "sleepy")
        await discord_server.wait_until(lambda: errors, what="the tree error")
    original = getattr(errors[0], "original", errors[0])
    assert isinstance(original, discord.NotFound) and original.code == 10062
    assert not ix.responded


async def test_rest_protocol_errors(discord_server: FakeDiscordServer, discord_world: DiscordWorld) -> None:
    """Raw HTTP checks of behaviour discord.py itself guards against client-side."""
    w = discord_world
    discord_server.require_synced_commands = False
    first = await discord_server.invoke_slash_command(w.general, w.alice, "anything")
    second = await discord_server.invoke_slash_command(w.general, w.alice, "anything")
    base = discord_server.api_base
    async with aiohttp.ClientSession() as http:
        url = f"{base}/interactions/{first.id}/{first.token}/callback?with_response=1"
        async with http.post(url, json={"type": 4, "data": {"content": "one"}}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/json"
            body = await resp.json()
            assert body["interaction"]["response_message_id"] == str(first.original.id)  # type: ignore[union-attr]
        async with http.post(url, json={"type": 4, "data": {"content": "two"}}) as resp:
            assert (resp.status, (await resp.json())["code"]) == (400, 40060)
        followup = f"{base}/webhooks/{discord_server.application_id}/{second.token}?wait=1"
        async with http.post(followup, json={"content": "too early"}) as resp:
            assert (resp.status, (await resp.json())["code"]) == (404, 10015)
        async with http.get(f"{base}/users/@me", headers={"Authorization": "Bot wrong"}) as resp:
            assert resp.status == 401
        discord_server.fail_next("GET", r"^/users/@me$", status=403, code=50001, message="nope")
        headers = {"Authorization": f"Bot {discord_server.token}"}
        async with http.get(f"{base}/users/@me", headers=headers) as resp:
            assert (resp.status, (await resp.json())["code"]) == (403, 50001)
        async with http.get(f"{base}/users/@me", headers=headers) as resp:
            assert resp.status == 200
    assert [m.content for m in discord_server.sent_messages] == ["one"]


async def test_bad_token_and_privileged_intents_are_rejected(discord_server: FakeDiscordServer) -> None:
    bot = make_bot()
    with pytest.raises(discord.LoginFailure):
        await bot.start("not-the-token")
    await bot.close()

    discord_server.gateway.privileged_intents_allowed = False
    bot = make_bot()
    with pytest.raises(discord.PrivilegedIntentsRequired):
        await asyncio.wait_for(bot.start(discord_server.token), timeout=5)
    await bot.close()


async def test_rest_lookups_and_bot_side_edits(discord_server: FakeDiscordServer, discord_world: DiscordWorld) -> None:
    w = discord_world
    target = await discord_server.post_message(w.general, w.bob, "look at this", attachments=[("x.png", PNG)])
    async with running_bot(discord_server, make_bot()) as bot:
        guild = bot.get_guild(w.guild.id)
        assert guild is not None
        assert (await bot.fetch_user(w.alice.id)).name == "alice"
        assert (await guild.fetch_member(w.bob.id)).id == w.bob.id
        assert {c.id for c in await guild.fetch_channels()} == set(w.guild.channels)
        assert (await bot.fetch_channel(w.nsfw.id)).is_nsfw()  # type: ignore[union-attr]
        channel = bot.get_channel(w.general.id)
        assert isinstance(channel, discord.TextChannel)
        fetched = await channel.fetch_message(target.id)
        assert fetched.content == "look at this" and await fetched.attachments[0].read() == PNG
        assert await fetched.author.display_avatar.read()  # default avatar served by the fake CDN

        sent = await channel.send("draft", file=discord.File(io.BytesIO(PNG), filename="one.png"))
        await sent.edit(content="final", attachments=[*sent.attachments, discord.File(io.BytesIO(PNG), "two.png")])
        stored = discord_server.messages[sent.id]
        assert stored.content == "final" and set(stored.files) == {"one.png", "two.png"}
        await sent.delete()
        assert stored.deleted and stored not in discord_server.history(w.general)
        with pytest.raises(discord.NotFound):
            await channel.fetch_message(sent.id)


async def test_world_changes_while_connected(discord_server: FakeDiscordServer, discord_world: DiscordWorld) -> None:
    w = discord_world
    bot = make_bot()
    joined: list[int] = []

    async def on_guild_join(guild: discord.Guild) -> None:
        joined.append(guild.id)

    bot.add_listener(on_guild_join)
    async with running_bot(discord_server, bot):
        carol = discord_server.add_user("carol")
        discord_server.add_member(w.guild, carol)
        mods = discord_server.add_role(w.guild, "mods", permissions=Perm.MANAGE_MESSAGES, members=[carol])
        extra = discord_server.add_text_channel(w.guild, "pics", private_to=[mods])
        other = discord_server.add_guild("Second Guild")
        await discord_server.wait_until(lambda: joined == [other.id], what="on_guild_join")
        guild = bot.get_guild(w.guild.id)
        assert guild is not None
        member = guild.get_member(carol.id)
        channel = guild.get_channel(extra.id)
        assert member is not None and isinstance(channel, discord.TextChannel)
        assert [r.name for r in member.roles] == ["@everyone", "mods"]
        assert channel.permissions_for(member).view_channel
        assert not channel.permissions_for(guild.get_member(w.alice.id)).view_channel  # type: ignore[arg-type]
        discord_server.update_channel(extra, nsfw=True)
        await discord_server.wait_until(lambda: channel.is_nsfw(), what="CHANNEL_UPDATE")


async def test_heartbeats_are_acknowledged(discord_server: FakeDiscordServer, discord_world: DiscordWorld) -> None:
    discord_server.gateway.heartbeat_interval_ms = 50
    async with running_bot(discord_server, make_bot()) as bot:
        await discord_server.wait_until(
            lambda: discord_server.gateway.connections[0].heartbeats >= 4, what="heartbeats"
        )
        assert bot.latency < 1.0
        assert len(discord_server.gateway.connections) == 1  # acks kept the first socket alive


async def test_autosharded_bot(discord_server: FakeDiscordServer) -> None:
    discord_server.shard_count = 2
    guilds = [discord_server.add_guild(f"g{i}") for i in range(4)]
    bot = make_bot(cls=commands.AutoShardedBot)
    async with running_bot(discord_server, bot):
        assert bot.shard_count == 2
        assert {g.id for g in bot.guilds} == {g.id for g in guilds}
        assert len(discord_server.gateway.connected_sessions()) == 2
        assert discord_server.requests_to("GET", r"^/gateway/bot$")


async def test_unknown_routes_are_reported(discord_server: FakeDiscordServer, discord_world: DiscordWorld) -> None:
    async with running_bot(discord_server, make_bot()) as bot:
        channel = bot.get_channel(discord_world.general.id)
        assert isinstance(channel, discord.TextChannel)
        with pytest.raises(discord.NotFound):
            await channel.create_invite()
    assert [r.path for r in discord_server.unhandled_requests] == [f"/channels/{discord_world.general.id}/invites"]
    with pytest.warns(HarnessWarning, match="invites"):
        await discord_server.stop()
    discord_server.unhandled_requests.clear()


async def test_wait_helpers_fail_with_context(discord_server: FakeDiscordServer, discord_world: DiscordWorld) -> None:
    async with running_bot(discord_server, make_bot()):
        await discord_server.post_message(discord_world.general, discord_world.alice, "nobody answers")
        with pytest.raises(HarnessTimeout, match="recent activity"):
            await discord_server.wait_for_message(discord_world.general, timeout=0.2)
        await discord_server.ensure_no_message(discord_world.general, within=0.05)


def test_message_flags_constants_match_discord_py() -> None:
    assert MessageFlag.EPHEMERAL == discord.MessageFlags(ephemeral=True).value
    assert MessageFlag.LOADING == discord.MessageFlags(loading=True).value

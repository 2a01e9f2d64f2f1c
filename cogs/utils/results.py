"""Image results as embeds (thumbnail, caption, labels, jump link), paged with buttons.

A picture whose caption is not written yet (fast tier) says so in the title, never a blank caption, and
still shows its labels, topic and mood; the mood is then the picture's own (CLIP), and says so.
A picture with words in it shows a snippet of them, quoted and defused like in the LLM's context line
(the text is whatever the picture's maker wrote).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import discord

from bot.analysis import quote_image_text
from bot.memory.records import StoredImage
from bot.memory.store import SearchHit
from cogs.utils.errors import AnsweringView

RESULT_LIMIT = 12  # pictures one search shows (/find and a search asked in plain words)
PAGE_SIZE = 4  # embeds per page: each carries a thumbnail, so keep pages glanceable
SNIPPET_CHARS = 200  # of the picture's own text, on its card


def image_embed(image: StoredImage, *, index: int, total: int, score: str | None = None) -> discord.Embed:
    ref = image.ref
    embed = discord.Embed(title=image.display_caption[:256], url=ref.jump_url,
                          colour=discord.Colour.blurple(), timestamp=ref.created_at)
    details = [f"by <@{ref.author_id}>"]
    if ref.guild_id is not None:
        details.append(f"in <#{ref.channel_id}>")
    details.append(f"[jump to message]({ref.jump_url})")
    embed.description = " · ".join(details)
    if image.labels:
        embed.add_field(name="Labels", value=", ".join(image.labels)[:1024])
    embed.add_field(name="Mood", value=f"{image.sentiment} (from the picture)" if image.caption_pending
                    else image.sentiment)
    if image.topic:
        embed.add_field(name="Topic", value=image.topic)
    if image.text.strip():
        snippet = quote_image_text(image.text, SNIPPET_CHARS)
        embed.add_field(name="Text in the picture", value=discord.utils.escape_markdown(f'"{snippet}"')[:1024],
                        inline=False)
    embed.set_thumbnail(url=ref.attachment_url)
    footer = f"{index} of {total}"
    embed.set_footer(text=f"{footer} · {score}" if score else footer)
    return embed


def result_embeds(results: Sequence[SearchHit | StoredImage]) -> list[discord.Embed]:
    embeds = []
    for number, result in enumerate(results, start=1):
        if isinstance(result, SearchHit):
            embeds.append(image_embed(result.image, index=number, total=len(results),
                                      score=f"match {result.score:.3f}"))
        else:
            embeds.append(image_embed(result, index=number, total=len(results)))
    return embeds


class ResultPages(AnsweringView):
    """◀ / ▶ through result embeds; only the person who asked can turn the pages (a failing button is
    answered like a failing command, cogs/utils/errors.py)."""

    def __init__(self, embeds: list[discord.Embed], owner_id: int, *, timeout: float = 300.0) -> None:
        super().__init__(timeout=timeout)
        self.embeds = embeds
        self.owner_id = owner_id
        self.page = 0
        self._sync()

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.embeds) // PAGE_SIZE))

    def current(self) -> list[discord.Embed]:
        return self.embeds[self.page * PAGE_SIZE:(self.page + 1) * PAGE_SIZE]

    def _sync(self) -> None:
        self.previous.disabled = self.page == 0
        self.next.disabled = self.page >= self.pages - 1
        self.counter.label = f"{self.page + 1}/{self.pages}"

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.owner_id:
            await interaction.response.send_message("These results belong to someone else.", ephemeral=True)
            return False
        return True

    async def _turn(self, interaction: discord.Interaction, delta: int) -> None:
        self.page = min(max(self.page + delta, 0), self.pages - 1)
        self._sync()
        await interaction.response.edit_message(embeds=self.current(), view=self)

    @discord.ui.button(label="◀", style=discord.ButtonStyle.secondary, custom_id="results:previous")
    async def previous(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await self._turn(interaction, -1)

    @discord.ui.button(label="1/1", style=discord.ButtonStyle.secondary, disabled=True, custom_id="results:page")
    async def counter(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:  # pragma: no cover
        await interaction.response.defer()

    @discord.ui.button(label="▶", style=discord.ButtonStyle.secondary, custom_id="results:next")
    async def next(self, interaction: discord.Interaction, _: discord.ui.Button) -> None:
        await self._turn(interaction, 1)


def paged(results: Sequence[SearchHit | StoredImage], owner_id: int) -> dict[str, Any]:
    """Keyword arguments for ``send``/``reply``: the first page of embeds, plus a pager when there is
    more than one page (discord.py takes no ``view=None``, so the key is left out then)."""
    embeds = result_embeds(results)
    if len(embeds) <= PAGE_SIZE:
        return {"embeds": embeds}
    view = ResultPages(embeds, owner_id)
    return {"embeds": view.current(), "view": view}

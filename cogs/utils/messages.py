"""Discord messages → the core's types (IncomingImage, Turn). Discord I/O only, no logic."""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath
from urllib.parse import urlparse

import discord

from bot.chat.conversation import PictureSource, Turn
from bot.ingest import ImageIngestor, IncomingImage
from bot.memory.records import ImageRef

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif", ".heic"}


def _looks_like_image(content_type: str | None, filename: str) -> bool:
    if content_type:
        return content_type.startswith("image/")
    return PurePosixPath(filename.lower()).suffix in IMAGE_SUFFIXES


def is_nsfw(channel: object) -> bool:
    """Age-restricted channel (threads inherit their parent's flag; DMs never are)."""
    check = getattr(channel, "is_nsfw", None)
    return bool(check()) if callable(check) else False


def embed_image_id(message_id: int, url: str) -> int:
    """A stable id for an image linked as an embed (it has no attachment id): same link, same id."""
    return int(hashlib.sha256(f"{message_id}:{url}".encode()).hexdigest()[:15], 16) or 1


def image_ref(message: discord.Message, image_id: int, url: str, filename: str) -> ImageRef:
    return ImageRef(
        attachment_id=image_id, message_id=message.id, channel_id=message.channel.id,
        guild_id=message.guild.id if message.guild else None, author_id=message.author.id,
        jump_url=message.jump_url, attachment_url=url, filename=filename, created_at=message.created_at,
        nsfw=is_nsfw(message.channel),
    )


def incoming_images(message: discord.Message) -> list[IncomingImage]:
    """Every image of a message: all attachments, then images linked as embeds."""
    images = [
        IncomingImage(key=attachment.id, filename=attachment.filename, size=attachment.size,
                      read=attachment.read,
                      ref=image_ref(message, attachment.id, attachment.url, attachment.filename))
        for attachment in message.attachments
        if _looks_like_image(attachment.content_type, attachment.filename)
    ]
    seen: set[str] = set()
    for embed in message.embeds:
        # A link to a picture unfurls as an "image" embed (thumbnail) or a rich embed with an image.
        for media in (embed.image, embed.thumbnail):
            url = media.url if media else None
            if not url or url in seen or embed.type in ("gifv", "video"):
                continue
            seen.add(url)
            http = message._state.http  # discord.py's own session: the same limits and proxies
            name = PurePosixPath(urlparse(url).path).name or "embedded-image"
            ref = image_ref(message, embed_image_id(message.id, url), url, name)
            images.append(IncomingImage(key=url, filename=name, size=None,
                                        read=lambda url=url, http=http: http.get_from_cdn(url), ref=ref))
            break
    return images


def addressed_to_bot(message: discord.Message, bot_user: discord.abc.User) -> bool:
    """A DM, a mention of the bot, or a reply to one of the bot's messages."""
    if message.guild is None:
        return True
    if bot_user in message.mentions:
        return True
    resolved = message.reference.resolved if message.reference else None
    return isinstance(resolved, discord.Message) and resolved.author.id == bot_user.id


_MENTION = re.compile(r"<@!?(\d+)>")


def readable_text(message: discord.Message) -> str:
    """Message text with user mentions shown as @names (the LLM cannot resolve ids)."""
    names = {str(user.id): user.display_name for user in message.mentions}
    return _MENTION.sub(lambda m: "@" + names.get(m.group(1), "someone"), message.content)


def to_turn(message: discord.Message, bot_user: discord.abc.User, ingestor: ImageIngestor) -> Turn:
    """One message as a chat turn: its analysed pictures as context lines, and (for vision models) the
    way to read those that are this message's own attachments again.

    ``pictures`` never holds anything but this message's attachments: the chat cog calls this only for
    the messages of the conversation (the channel history it read + the message itself), which is the
    rule that keeps pictures from elsewhere away from the LLM (bot/chat/vision.py). Images linked as
    embeds keep their line but are not re-downloaded for the model (their size is unknown up front).
    """
    images = incoming_images(message)
    known = [(image, ingestor.known(image)) for image in images]
    analyses = [analysis for _, analysis in known if analysis is not None]
    from_bot = message.author.id == bot_user.id
    attachment_ids = {attachment.id for attachment in message.attachments}
    pictures: list[PictureSource] = [] if from_bot else [
        image for image, analysis in known if analysis is not None and image.key in attachment_ids]
    return Turn(
        author=message.author.display_name,
        text=readable_text(message),
        from_bot=from_bot,
        images=analyses,
        unreadable_images=len(images) - len(analyses),
        pictures=pictures,
    )

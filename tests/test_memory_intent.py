"""Plain-chat search requests: found when asked, silent on ordinary chat, dates relative to `now`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from bot.memory.intent import SearchIntent, detect_search_intent

NOW = datetime(2024, 5, 15, 14, 30, tzinfo=UTC)  # a Wednesday


def day(d: int, month: int = 5, hour: int = 0) -> datetime:
    return datetime(2024, month, d, hour, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "query", "since", "until", "author"),
    [
        ("show me the dog picture from last week", "dog", day(6), day(13), None),
        ("find that photo of a cat", "cat", None, None, None),
        ("any pics of pizza from yesterday?", "pizza", day(14), day(15), None),
        ("what did alice post last month", "", day(1, 4), day(1, 5), "alice"),
        ("what did Alice post?", "", None, None, "alice"),
        ("pics of the beach this week", None, None, None, None),  # no request verb: chat
        ("show me beach photos from this week", "beach", day(13), day(20), None),
        ("can you find the pic bob posted today", "", day(15), day(16), "bob"),
        ("<@42> please show me screenshots of the error from 3 days ago", "error", day(12), day(13), None),
        ("hey bot, search for memes about cats", "cats", None, None, None),
        ("find photos by <@!77> since monday", "", day(13), None, "<@77>"),
        ("show me my selfies from last month", "", day(1, 4), day(1, 5), "me"),
        ("where's that picture of the sunset from last friday", "sunset", day(10), day(11), None),
        ("do you have any photos from the trip?", "trip", None, None, None),
        ("find pictures of a red car in the past 2 weeks", "red car", NOW - timedelta(weeks=2), None, None),
        ("pull up the image of the whiteboard from this morning", "whiteboard", day(15), day(16), None),
        ("show me pictures from 2 weeks ago", "", day(29, 4), day(6), None),
        ("find pics from paris", "", None, None, "paris"),
    ],
)
def test_search_requests_are_recognised(text, query, since, until, author):
    intent = detect_search_intent(text, now=NOW)
    if query is None:
        assert intent is None
        return
    assert intent == SearchIntent(query=query, since=since, until=until, author_hint=author)


@pytest.mark.parametrize(
    "text",
    [
        "I'll show you later",
        "find out what time it is",
        "that picture is nice",
        "show me how you did that",
        "I can't find my keys",
        "I can't find my photo album anywhere",
        "look at this picture!",
        "show me your cat pics",
        "is there a picture of your dog?",
        "any pics?",
        "any news?",
        "any plans for the weekend?",
        "where is the party tonight",
        "did you see the photo alice posted?",
        "what did alice say yesterday",
        "what did you post",
        "find out who posted that picture",
        "this photo of a cat is so cute",
        "search me",
        "",
    ],
)
def test_ordinary_chat_is_left_alone(text):
    assert detect_search_intent(text, now=NOW) is None


def test_days_start_in_the_timezone_of_now():
    tokyo = timezone(timedelta(hours=9))
    now = datetime(2024, 5, 15, 1, 0, tzinfo=tokyo)  # still the 14th in UTC
    intent = detect_search_intent("show me photos from yesterday", now=now)
    assert intent is not None
    assert intent.since == datetime(2024, 5, 14, tzinfo=tokyo) and intent.until == datetime(2024, 5, 15, tzinfo=tokyo)


def test_month_and_year_boundaries():
    january = datetime(2024, 1, 3, 9, tzinfo=UTC)
    intent = detect_search_intent("find photos from last month", now=january)
    assert intent is not None and (intent.since, intent.until) == (day(1, 12).replace(year=2023), day(1, 1))
    intent = detect_search_intent("show me pics of snow from last year", now=january)
    assert intent is not None and intent.query == "snow"
    assert (intent.since, intent.until) == (datetime(2023, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC))


def test_an_unresolvable_author_becomes_part_of_the_query():
    intent = detect_search_intent("find pics of the eiffel tower from paris", now=NOW)
    assert intent is not None and intent.author_hint == "paris"
    assert intent.without_author() == SearchIntent(query="eiffel tower paris")
    assert SearchIntent(query="dogs", author_hint="me").without_author() == SearchIntent(query="dogs")


def test_from_earlier_is_not_a_poster():
    intent = detect_search_intent("show me the cat picture from earlier", now=NOW)
    assert intent is not None and intent.query == "cat" and intent.author_hint is None

"""Overview of a server's pictures: /stats, /gallery, /index (backfill), caption-vs-image agreement,
and discovered topics. Discord-free: ``cogs/overview.py`` is the thin Discord surface, ``bot.cli`` the
command line (``python -m bot compare``, ``python -m bot topics``).

Every read goes through :meth:`bot.memory.store.ImageStore.images` with an
:class:`~bot.memory.service.Audience`, so the overview shows exactly what /find would show the same
person; the only server-wide reads (clustering, the compare report) run for admins and operators, and
what they produce is gated again before anyone sees it (:meth:`~bot.overview.topics.TopicCluster.visible_to`).

No re-exports here: importing the package must not pull in matplotlib or scikit-learn.
"""

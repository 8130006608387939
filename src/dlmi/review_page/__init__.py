"""``dlmi review``: one self-contained HTML page for looking through a prediction run image by image.

``build`` gathers the rows and the provenance (a ``dlmi predict`` folder, or an evaluated side), ``pictures``
writes the thumbnails and detail strips beside the page, ``html`` renders the page with its script and
style inlined, ``flags`` reads back the flags CSV the page exports. See ``docs/review.md``.
"""

#!/usr/bin/env python3
"""Checks the built book (mdbook build docs, into target/book) offline.

Every relative link and image of every page must name a file of the book, and every
#fragment an id in that file; nothing may be loaded from another host (scripts, styles,
images, fonts), since the book is read where there is no internet. Links to other hosts
(<a href="https://...">) are allowed and not followed: there is no internet here.

Usage: tests/docs/linkcheck.py [BOOK_DIR]      (default target/book)
"""
import html.parser
import os
import sys
import urllib.parse


class Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.links = []  # (attribute, tag, url)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        for key in ("id", "name"):
            if a.get(key):
                self.ids.add(a[key])
        for key in ("href", "src"):
            if a.get(key) is not None:
                self.links.append((key, tag, a[key]))


def parse(path, cache={}):
    if path not in cache:
        p = Page()
        with open(path, encoding="utf-8") as f:
            p.feed(f.read())
        cache[path] = p
    return cache[path]


def main():
    book = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/book")
    if not os.path.isfile(os.path.join(book, "index.html")):
        sys.exit(f"linkcheck: no built book in {book} (run mdbook build docs)")
    errors, pages, links = [], 0, 0
    for root, _, files in os.walk(book):
        for name in sorted(files):
            if not name.endswith(".html"):
                continue
            page = os.path.join(root, name)
            rel = os.path.relpath(page, book)
            pages += 1
            for attr, tag, url in parse(page).links:
                links += 1
                u = urllib.parse.urlsplit(url)
                if u.scheme in ("http", "https") or url.startswith("//"):
                    # A link the reader follows is fine; a resource the page loads is not.
                    if not (tag == "a" and attr == "href"):
                        errors.append(f"{rel}: loads {url} from another host")
                    continue
                if u.scheme in ("mailto", "javascript", "data"):
                    continue
                path = urllib.parse.unquote(u.path)
                if not path:
                    target = page
                elif path.startswith("/"):
                    # Absolute: from the site's root, which is the book's (mdBook's 404
                    # page links so, with site-url "/").
                    target = os.path.normpath(os.path.join(book, path.lstrip("/")))
                else:
                    target = os.path.normpath(os.path.join(os.path.dirname(page), path))
                if not (target + os.sep).startswith(book + os.sep):
                    errors.append(f"{rel}: {url} points outside the book")
                    continue
                if os.path.isdir(target):
                    target = os.path.join(target, "index.html")
                if not os.path.exists(target):
                    errors.append(f"{rel}: {url}: no such file in the book")
                    continue
                frag = urllib.parse.unquote(u.fragment)
                if frag and target.endswith(".html") and frag not in parse(target).ids:
                    errors.append(f"{rel}: {url}: no #{frag} in {os.path.relpath(target, book)}")
    for e in errors:
        print(e, file=sys.stderr)
    print(f"linkcheck: {pages} pages, {links} links and resources, {len(errors)} broken")
    sys.exit(1 if errors else 0)


main()

"""`gateway policy studio`: edit the policy in a browser, see who can do what, simulate, review, save safely.

`workspace` holds the files and runs the policy tools on edited text; `app` is the web app (one page, a
JSON API, a one-time secret); `cli` adds the sub-command. The page is package data (`static/`): no build
step and nothing loaded from outside the package.
"""

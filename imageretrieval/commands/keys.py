"""`imageretrieval keys create|list|revoke`: the API keys of the workdir (only their hashes are stored)."""

from __future__ import annotations

import json

from ..keys import SCOPES


def register(sub) -> None:
    import argparse

    from ..cli import add_settings_flags

    p = sub.add_parser("keys", help="create, list and revoke API keys",
                       description="API keys for the search API (Authorization: Bearer <key>). A write key may "
                                   "also read. Stored hashed in <WORKDIR>/keys.json; a running API sees changes "
                                   "on its next request.")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = ksub.add_parser("create", help="create a key; it is printed on the last line, the only time it is shown")
    create.add_argument("--name", required=True, help="who or what uses it, e.g. shop-backend")
    create.add_argument("--scope", choices=SCOPES, default="read")
    create.set_defaults(func=run_create)
    listing = ksub.add_parser("list", help="the keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=run_list)
    revoke = ksub.add_parser("revoke", help="revoke a key by its name or id")
    revoke.add_argument("key", metavar="NAME_OR_ID")
    revoke.set_defaults(func=run_revoke)
    for action in (create, listing, revoke):  # --workdir and the others, also after the action
        add_settings_flags(action, default=argparse.SUPPRESS)


def _store(settings):
    from ..keys import KeyStore

    return KeyStore(settings.workdir)


def run_create(args, settings) -> int:
    from ..cli import CLIError
    from ..keys import ApiKeyError

    try:
        record, key = _store(settings).create(args.name, args.scope)
    except ApiKeyError as exc:
        raise CLIError(str(exc)) from exc
    print(f"created {record.scope} key {record.name!r} (id {record.id}); store it now, it is not shown again:")
    print(key)
    return 0


def run_list(args, settings) -> int:
    keys = [k.public() for k in _store(settings).list()]
    if args.json:
        print(json.dumps(keys))
        return 0
    if not keys:
        print("no keys (imageretrieval keys create --name NAME --scope read|write)")
    for k in keys:
        state = f"revoked {k['revoked']}" if k["revoked"] else "active"
        print(f"{k['id']}  {k['scope']:<5}  {state:<32}  created {k['created']}  {k['name']}")
    return 0


def run_revoke(args, settings) -> int:
    from ..cli import CLIError
    from ..keys import ApiKeyError

    try:
        record = _store(settings).revoke(args.key)
    except ApiKeyError as exc:
        raise CLIError(str(exc)) from exc
    print(f"revoked key {record.name!r} (id {record.id})")
    return 0

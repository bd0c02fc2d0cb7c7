#!/usr/bin/env bash
# Verifies a ferry bundle with standard tools only (tar, jq, base64, xxd, openssl,
# sha256sum, dd, stat) and the trust root file: no ferry code is involved. It is the
# procedure of docs/auditor-guide.md, runnable, and it applies the same input rules as
# ferry (docs/bundle-format.md): plain ustar only, strict base64, one JSON value with no
# key twice, no unknown fields, size and depth caps. It does not walk root rotations:
# pass the root the bundle was signed under (after checking that root by hand).
#
# usage: verify-by-hand.sh BUNDLE.ferry root.json [SITE]
set -Eeuo pipefail
bundle=$1 root=$2 site=${3:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "REFUSED: $*" >&2; exit 1; }
# Any step that fails unexpectedly (a tool that cannot read its input) is a refusal too: exit 1.
trap 'echo "REFUSED: step at line $LINENO failed" >&2; exit 1' ERR
MAX_MANIFEST=4194304 MAX_ROOT=262144

# 1. The container, header by header (tar itself would silently apply pax and GNU extension headers):
#    every entry a POSIX ustar ("ustar\0" "00") regular file (type 0) without the prefix field; then the
#    names: manifest first, then roots, then blobs, no duplicates.
blocks=$(($(stat -c %s "$bundle") / 512))
b=0 manifest_size=-1
: >"$work/names"
zeros=$(printf '0%.0s' $(seq 310))
while :; do
  [ "$b" -lt "$blocks" ] || fail "archive ends without an end-of-archive marker"
  h=$(dd if="$bundle" bs=512 skip="$b" count=1 status=none | xxd -p -c 512)
  [ -n "${h//0/}" ] || break # a zero block: the end-of-archive marker
  type=${h:312:2}
  [ "$type" = 30 ] || [ "$type" = 00 ] || fail "entry header at block $b has type 0x$type; bundles hold regular files only (no pax or GNU long-name headers, links or devices)"
  [ "${h:514:16}" = 7573746172003030 ] || fail "entry header at block $b is not POSIX ustar"
  [ "${h:690:310}" = "$zeros" ] || fail "entry header at block $b uses the ustar prefix field"
  name=$(printf %s "${h:0:200}" | xxd -r -p | tr -d '\0')
  sizehex=${h:248:24}
  if [ "${sizehex:0:2}" = 80 ]; then size=$((16#${sizehex:2})); else
    size=$(printf %s "$sizehex" | xxd -r -p | tr -d '\0 ')
    [[ $size =~ ^[0-7]+$ ]] || fail "entry header at block $b has a malformed size"
    size=$((8#$size))
  fi
  [ "$name" != manifest.dsse.json ] || manifest_size=$size
  printf '%s\n' "$name" >>"$work/names"
  b=$((b + 1 + (size + 511) / 512))
done
[ "$(head -n1 "$work/names")" = manifest.dsse.json ] || fail "first entry is not manifest.dsse.json"
grep -Evx 'manifest\.dsse\.json|root/[1-9][0-9]*\.root\.json|blobs/sha256/[0-9a-f]{64}' "$work/names" && fail "unexpected entry names above"
[ "$(sort "$work/names" | uniq -d | wc -l)" -eq 0 ] || fail "duplicate entries"
[ "$manifest_size" -le "$MAX_MANIFEST" ] || fail "manifest envelope is $manifest_size bytes; the limit is $MAX_MANIFEST"
mkdir "$work/x" && tar -xf "$bundle" -C "$work/x" --no-same-owner --no-same-permissions

# strict_json FILE WHAT MAXDEPTH: exactly one JSON value, no byte order mark, no key twice in any object,
# nested no deeper than MAXDEPTH. jq keeps the last of two equal keys silently, so the key check reads
# the event stream: once a value at a path is complete, nothing may appear at or below that path again.
strict_json() {
  [ "$(head -c3 "$1" | xxd -p)" != efbbbf ] || fail "$2 starts with a byte order mark"
  jq -n --stream '
    def done($d; $p): any(range(0; ($p | length) + 1); $d[$p[0:.] | tojson] // false);
    reduce inputs as $e ({d: {}, bad: false};
      if .bad then .
      elif ($e | length) == 2 then (if done(.d; $e[0]) then .bad = true else .d[$e[0] | tojson] = true end)
      else .d[$e[0][0:-1] | tojson] = true end)
    | if .bad then error("dup") else empty end' "$1" >/dev/null 2>&1 ||
    fail "$2 is not strict JSON (a key appears twice, more than one value, or a syntax error)"
  depth=$(jq '[[], paths(type == "object" or type == "array")] | map(length) | max + 1' "$1" 2>/dev/null) ||
    fail "$2 nests too deep for jq to parse"
  [ "$depth" -le "$3" ] || fail "$2 nests deeper than $3"
}

# b64 ENVELOPE FIELD OUT: the field decoded, if it is canonical padded standard base64 (base64 -w0 of
# the decoded bytes gives it back exactly), else fails.
b64() {
  jq -j "$2" "$1" >"$work/b64" && base64 -d "$work/b64" >"$3" 2>/dev/null &&
    base64 -w0 "$3" | cmp -s - "$work/b64"
}

# An envelope: strict JSON, only payloadType, payload and signatures (each only keyid and sig), at most 64.
check_envelope() {
  strict_json "$1" "$2" 3
  jq -e 'type == "object" and (keys - ["payload", "payloadType", "signatures"] | length == 0)
    and (.payloadType | type == "string" and . != "") and (.payload | type == "string")
    and (.signatures | type == "array" and length <= 64)
    and all(.signatures[]; type == "object" and (keys - ["keyid", "sig"] | length == 0)
      and (.sig | type == "string") and ((has("keyid") | not) or (.keyid | type == "string")))' "$1" >/dev/null ||
    fail "$2 is not a DSSE envelope of payloadType, payload and signatures (keyid, sig) alone"
  b64 "$1" .payload "$work/body" || fail "payload of $2 is not canonical padded standard base64"
}

# DSSE PAE of (type, payload file) into $3
pae() { printf 'DSSEv1 %d %s %d ' "$(printf %s "$1" | wc -c)" "$1" "$(stat -c %s "$2")" >"$3"; cat "$2" >>"$3"; }

# Count distinct keys of ROLE in ROOT_PAYLOAD that signed ENVELOPE (with TYPE).
count_signers() {
  local env=$1 type=$2 rootp=$3 role=$4 n=0
  [ "$(jq -r .payloadType "$env")" = "$type" ] || fail "payloadType of $env is not $type"
  b64 "$env" .payload "$work/body" || fail "payload of $env is not canonical padded standard base64"
  pae "$type" "$work/body" "$work/pae"
  for keyid in $(jq -r ".roles.$role.keyids[]" "$rootp"); do
    # Ed25519 SubjectPublicKeyInfo = fixed 12-byte DER prefix + the 32-byte key
    { printf '302a300506032b6570032100'; jq -r ".keys[\"$keyid\"].public" "$rootp"; } | xxd -r -p >"$work/pub.der"
    for i in $(seq 0 $(($(jq '.signatures | length' "$env") - 1))); do
      b64 "$env" ".signatures[$i].sig" "$work/sig" || continue # a garbage signature counts for nothing
      if openssl pkeyutl -verify -pubin -keyform DER -inkey "$work/pub.der" -rawin -in "$work/pae" -sigfile "$work/sig" >/dev/null 2>&1; then
        n=$((n + 1)); break
      fi
    done
  done
  echo "$n"
}

# 2. The root: at most 256 KiB, a strict envelope and payload with no unknown field, signed by a threshold
#    of its own root keys.
[ "$(stat -c %s "$root")" -le "$MAX_ROOT" ] || fail "root file is larger than $MAX_ROOT bytes"
check_envelope "$root" "root"
cp "$work/body" "$work/root.payload"
strict_json "$work/root.payload" "root payload" 4
unknown=$(jq -r '[(keys - ["type", "version", "expires", "created", "keys", "roles"] | .[]),
  (.keys | to_entries[] | .key as $k | .value | keys - ["type", "public"] | .[] | "keys.\($k).\(.)"),
  (.roles | keys - ["root", "bundle"] | .[] | "roles.\(.)"),
  (.roles | to_entries[] | .key as $r | .value | keys - ["keyids", "threshold"] | .[] | "roles.\($r).\(.)")]
  | .[0] // empty' "$work/root.payload") || fail "root payload is not a ferry root"
[ -z "$unknown" ] || fail "root: $unknown is not a known field"
have=$(count_signers "$root" application/vnd.ferry.root+json "$work/root.payload" root)
need=$(jq .roles.root.threshold "$work/root.payload")
[ "$have" -ge "$need" ] || fail "root is signed by $have root key(s), needs $need"
[ "$(jq -r .expires "$work/root.payload")" \> "$(date -u +%Y-%m-%dT%H:%M:%SZ)" ] || fail "root expired"

# 3. The manifest: signed by a threshold of the root's bundle keys, unexpired, for this site.
env=$work/x/manifest.dsse.json
check_envelope "$env" "manifest envelope"
have=$(count_signers "$env" application/vnd.ferry.manifest+json "$work/root.payload" bundle)
need=$(jq .roles.bundle.threshold "$work/root.payload")
[ "$have" -ge "$need" ] || fail "manifest is signed by $have bundle key(s), needs $need"
b64 "$env" .payload "$work/manifest.json" || fail "manifest payload is not canonical padded standard base64"
strict_json "$work/manifest.json" "manifest" 4
unknown=$(jq -r '[(keys - ["type", "publisher", "sequence", "created", "expires", "sites", "artifacts",
    "rollout", "pins", "minAgentVersion"] | .[]),
  (.artifacts // [] | to_entries[] | .key as $i | .value
    | keys - ["name", "kind", "version", "platform", "interpreter", "sha256", "size"] | .[] | "artifacts[\($i)].\(.)"),
  (.rollout // {} | keys - ["agent", "strategy", "waves", "maxFailureRate", "window"] | .[] | "rollout.\(.)"),
  (.rollout.waves // [] | to_entries[] | .key as $i | .value | keys - ["percent", "soakMinutes"] | .[]
    | "rollout.waves[\($i)].\(.)"),
  (.rollout.window // {} | keys - ["days", "start", "end", "tz"] | .[] | "rollout.window.\(.)")]
  | .[0] // empty' "$work/manifest.json") || fail "manifest payload is not a ferry manifest"
[ -z "$unknown" ] || fail "manifest: $unknown is not a known field"
[ "$(jq -r .expires "$work/manifest.json")" \> "$(date -u +%Y-%m-%dT%H:%M:%SZ)" ] || fail "manifest expired"
if [ -n "$site" ]; then
  jq -e --arg s "$site" '.sites | index($s) or index("*")' "$work/manifest.json" >/dev/null || fail "not for site $site"
fi

# 4. Every blob present is named by the manifest, with its size and digest.
for f in "$work"/x/blobs/sha256/*; do
  [ -e "$f" ] || continue
  d=$(basename "$f")
  size=$(jq --arg d "$d" '[.artifacts[] | select(.sha256 == $d) | .size][0] // empty' "$work/manifest.json")
  [ -n "$size" ] || fail "blob $d is not in the manifest"
  [ "$(stat -c %s "$f")" -eq "$size" ] || fail "blob $d has the wrong size"
  [ "$(sha256sum "$f" | cut -c1-64)" = "$d" ] || fail "blob $d does not match its digest"
done

jq -r '"publisher \(.publisher) sequence \(.sequence), expires \(.expires)"' "$work/manifest.json"
echo "OK: $have of $need bundle signature(s) verified; all blobs present match the manifest"

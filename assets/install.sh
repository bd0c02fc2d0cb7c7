#!/bin/sh
# ferry node install, served by a site mirror as GET /install.sh:
#
#   curl -fsSL http://MIRROR/install.sh | sh -s -- --token T --root-sha256 FINGERPRINT
#
# Installs the ferry agent and its private Node.js runtime on a node that has neither, enrols it with the
# mirror and starts it under systemd. It trusts nothing it downloads until it is checked (docs/install.md):
#   1. the trust root must have the SHA-256 the operator typed (`ferry trust show root.json` prints it);
#   2. the active manifest must be signed by a threshold of that root's bundle keys, checked with this
#      node's own openssl over the DSSE pre-authentication encoding, as docs/verify-by-hand.sh does;
#   3. the agent and the runtime must have the size and SHA-256 the signed manifest gives them.
# Only then is anything written outside a private temporary directory. A refusal prints
# "REFUSED CODE: reason" and exits 1; a usage error exits 2.
#
# Needs: a POSIX sh, openssl (3.x, for Ed25519), curl or wget, gzip, and the usual coreutils.
set -eu
umask 022

# Filled in by the mirror that serves this script (its own address as the client reached it, its site).
default_mirror='@@FERRY_MIRROR@@'
default_site='@@FERRY_SITE@@'

MANIFEST_TYPE=application/vnd.ferry.manifest+json
MAX_MANIFEST=4194304

@@FERRY_VERIFY_LIB@@
usage() {
  cat >&2 <<'EOF'
usage: install.sh --root-sha256 F (--token T | --token-file FILE) [--mirror URL] [--site S] [--group G]...
                  [--root DIR] [--platform linux-x64|linux-arm64] [--no-start]
  --root-sha256 F  fingerprint of the site's trust root (`ferry trust show root.json`), 64 hex digits
  --token T        enrolment token from `ferry mirror token create` (used once, never stored)
  --mirror URL     the site mirror (default: the mirror that served this script)
  --site S         the site (default: the serving mirror's site)
  --group G        a group this node belongs to (repeatable; a token's groups win)
  --root DIR       install under DIR instead of / (an image or a test root)
  --no-start       install and enrol, but do not enable or start the service
EOF
  exit 2
}

mirror=$default_mirror site=$default_site root_sha='' token='' token_file='' groups='' prefix=/ platform=''
start=yes
while [ $# -gt 0 ]; do
  case $1 in
  --no-start) start=no && shift && continue ;;
  -h | --help) usage ;;
  --root-sha256 | --token | --token-file | --mirror | --site | --group | --root | --platform)
    [ $# -ge 2 ] || { say "$1 needs a value" && usage; } ;;
  *) say "unknown option $1" && usage ;;
  esac
  case $1 in
  --root-sha256) root_sha=$2 ;;
  --token) token=$2 ;;
  --token-file) token_file=$2 ;;
  --mirror) mirror=$2 ;;
  --site) site=$2 ;;
  --group) groups="$groups $2" ;;
  --root) prefix=$2 ;;
  --platform) platform=$2 ;;
  esac
  shift 2
done

case $root_sha in *[!0-9a-fA-F]* | '') say '--root-sha256 must be 64 hex digits' && usage ;; esac
[ ${#root_sha} -eq 64 ] || { say '--root-sha256 must be 64 hex digits' && usage; }
root_sha=$(printf %s "$root_sha" | tr A-F a-f)
if [ -n "$token_file" ]; then
  [ -z "$token" ] || { say 'give --token or --token-file, not both' && usage; }
  token=$(tr -d ' \t\r\n' <"$token_file") || usage
fi
[ -n "$token" ] || { say 'an enrolment token is required (--token T)' && usage; }
case $mirror in '' | *@@*) say 'give --mirror URL' && usage ;; esac
case $mirror in http://* | https://*) ;; *) say '--mirror must be an http:// or https:// URL' && usage ;; esac
mirror=${mirror%/}
case $site in '' | *@@*) say 'give --site S' && usage ;; esac
case $site in *[!A-Za-z0-9._-]*) say "--site $site: not a site name" && usage ;; esac
for g in $groups; do case $g in *[!A-Za-z0-9._-]*) say "--group $g: not a group name" && usage ;; esac; done
case $prefix in /*) ;; *) say '--root must be an absolute path' && usage ;; esac
prefix=${prefix%/}

if [ -z "$platform" ]; then
  case $(uname -s)-$(uname -m) in
  Linux-x86_64 | Linux-amd64) platform=linux-x64 ;;
  Linux-aarch64 | Linux-arm64) platform=linux-arm64 ;;
  *) refuse PLATFORM_UNSUPPORTED "$(uname -s) $(uname -m): ferry ships agents for linux-x64 and linux-arm64" ;;
  esac
fi
case $platform in *[!a-z0-9_-]*) say "--platform $platform: not a platform" && usage ;; esac

for p in openssl gzip sha256sum; do
  command -v "$p" >/dev/null 2>&1 || refuse MISSING_PROGRAM "$p is needed and not installed"
done
if command -v curl >/dev/null 2>&1; then getter=curl
elif command -v wget >/dev/null 2>&1; then getter=wget
else refuse MISSING_PROGRAM 'curl or wget is needed and neither is installed'; fi

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

# fetch PATH OUT MAX: GET $mirror$PATH into OUT, refused when it is larger than MAX bytes.
fetch() {
  if [ $getter = curl ]; then
    rc=0
    curl -fsS --max-time 900 --max-filesize "$3" -o "$2" "$mirror$1" 2>"$work/err" || rc=$?
    [ $rc -ne 63 ] || refuse TOO_LARGE "GET $mirror$1: more than $3 bytes"
    [ $rc -eq 0 ] || refuse FETCH_FAILED "GET $mirror$1: $(head -c 300 "$work/err")"
  else
    wget -q -T 900 -O "$2" "$mirror$1" 2>"$work/err" || refuse FETCH_FAILED "GET $mirror$1: $(head -c 300 "$work/err")"
  fi
  [ "$(size_of "$2")" -le "$3" ] || refuse TOO_LARGE "GET $mirror$1: more than $3 bytes"
}

say "mirror $mirror, site $site, platform $platform"

# 1. The root: exactly the one whose fingerprint the operator typed.
fetch /install/root.json "$work/root.json" $MAX_ROOT
verify_root "$work/root.json"

# 2. The manifest: a threshold of distinct bundle keys must have signed the exact payload bytes.
fetch /v1/manifest "$work/manifest.env" $MAX_MANIFEST
verify_signed "$work/manifest.env" $MANIFEST_TYPE "$work/manifest.json" MANIFEST
tr -d '\r\n' <"$work/manifest.json" >"$work/manifest.flat"
[ "$(strings type "$work/manifest.flat" | head -n1)" = ferry.manifest/v1 ] || refuse MANIFEST_INVALID 'not a ferry manifest'
expires=$(strings expires "$work/manifest.flat" | head -n1)
[ "$expires" \> "$(date -u +%Y-%m-%dT%H:%M:%SZ)" ] || refuse MANIFEST_EXPIRED "the active manifest expired at $expires"
say "manifest verified: $have of $need bundle signature(s)"

# 3. The artifacts, from the signed payload: the agent for this platform (the version the rollout names,
#    else the highest) and the runtime named ferry-runtime-<platform>.
grep -o '{[^{}]*"sha256"[^{}]*}' "$work/manifest.flat" >"$work/artifacts" || true
field() { printf %s "$1" | sed -n "s/.*\"$2\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p"; }
want=$(strings agent "$work/manifest.flat" | head -n1) # rollout.agent: no other field is named "agent"
agent='' agent_v='' runtime=''
while IFS= read -r a; do
  [ "$(field "$a" platform)" = "$platform" ] || continue
  case $(field "$a" kind) in
  agent)
    v=$(field "$a" version)
    if [ -n "$want" ] && [ "$v" = "$want" ]; then
      agent=$a agent_v=$v
    elif [ -z "$want" ] || [ "$agent_v" != "$want" ]; then
      [ "$(printf '%s\n%s\n' "$agent_v" "$v" | sort -V | tail -n1)" = "$v" ] && agent=$a agent_v=$v
    fi
    ;;
  file) [ "$(field "$a" name)" = "ferry-runtime-$platform" ] && runtime=$a ;;
  esac
done <"$work/artifacts"
[ -n "$agent" ] || refuse NO_AGENT "the active manifest carries no agent for $platform"
[ -n "$runtime" ] || refuse NO_RUNTIME "the active manifest carries no ferry-runtime-$platform"

# get ARTIFACT OUT: the blob, checked against the signed size and sha256.
get() {
  d=$(field "$1" sha256) n=$(field "$1" size)
  fetch "/v1/blobs/sha256/$d" "$2" "$n"
  [ "$(size_of "$2")" -eq "$n" ] || refuse ARTIFACT_MISMATCH "$(field "$1" name): $(size_of "$2") bytes, the manifest signs $n"
  [ "$(sha256_of "$2")" = "$d" ] || refuse ARTIFACT_MISMATCH "$(field "$1" name): its sha256 is not the signed $d"
}
get "$agent" "$work/ferry-agent"
get "$runtime" "$work/runtime.gz"
gzip -dc "$work/runtime.gz" >"$work/node" || refuse ARTIFACT_INVALID 'the runtime does not decompress'
chmod 0755 "$work/node" "$work/ferry-agent"
node_v=$("$work/node" --version 2>/dev/null) || refuse ARTIFACT_INVALID "the runtime does not run on this node ($platform)"
say "agent $agent_v and runtime node $node_v verified against the signed manifest"

rt=$(field "$runtime" sha256)
opt=$prefix/opt/ferry etc=$prefix/etc/ferry
cat >"$work/prestart.sh" <<'FERRY_PRESTART_EOF'
@@FERRY_PRESTART@@
FERRY_PRESTART_EOF
cat >"$work/unit" <<'FERRY_UNIT_EOF'
@@FERRY_AGENT_UNIT@@
FERRY_UNIT_EOF

# Already this agent, runtime and unit, enrolled: change nothing (a second run is a no-op).
same() { [ -f "$2" ] && [ "$(sha256_of "$1")" = "$(sha256_of "$2")" ]; }
if [ "$(readlink "$opt/current" 2>/dev/null)" = "versions/$agent_v" ] &&
  [ "$(readlink "$opt/runtime/current" 2>/dev/null)" = "$rt" ] &&
  same "$work/ferry-agent" "$opt/versions/$agent_v/ferry-agent" && same "$work/unit" "$prefix/etc/systemd/system/ferry-agent.service" &&
  grep -q '"agentId": *"' "$prefix/var/lib/ferry/agent/state.json" 2>/dev/null; then
  say "agent $agent_v and runtime node $node_v are installed and enrolled already: nothing changed"
  echo "ferry agent $agent_v unchanged (runtime node $node_v, root sha256 $root_sha)"
  exit 0
fi

# 4. Install: nothing above wrote outside $work. Each file goes to a temp name beside its place, then mv.
mkdir -p "$opt/versions/$agent_v" "$opt/runtime/$rt/bin" "$etc" "$prefix/etc/systemd/system" "$prefix/var/lib/ferry"
place() { cp "$1" "$2.tmp.$$" && chmod "$3" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"; }
place "$work/node" "$opt/runtime/$rt/bin/node" 0755
place "$work/ferry-agent" "$opt/versions/$agent_v/ferry-agent" 0755
ln -sfn "$rt" "$opt/runtime/current.tmp" && mv -fT "$opt/runtime/current.tmp" "$opt/runtime/current"
ln -sfn "versions/$agent_v" "$opt/current.tmp" && mv -fT "$opt/current.tmp" "$opt/current"
place "$work/root.json" "$etc/root.json" 0644
place "$work/prestart.sh" "$opt/prestart.sh" 0755
place "$work/unit" "$prefix/etc/systemd/system/ferry-agent.service" 0644
glist=''
for g in $groups; do glist="$glist${glist:+,}\"$g\""; done
printf '{"state":"/var/lib/ferry/agent","mirrors":["%s"],"trust":"/etc/ferry/root.json","site":"%s","groups":[%s],"installRoot":"/opt/ferry"}\n' \
  "$mirror" "$site" "$glist" >"$work/agent.json"
place "$work/agent.json" "$etc/agent.json" 0644
say "installed agent $agent_v under $prefix/opt/ferry, unit $prefix/etc/systemd/system/ferry-agent.service"

# 5. Enrol now with the token (it is never written to disk), with the installed files and runtime.
mkdir -p "$prefix/var/lib/ferry/agent" && chmod 0700 "$prefix/var/lib/ferry/agent"
set -- --state "$prefix/var/lib/ferry/agent" --mirror "$mirror" --trust "$etc/root.json" --site "$site"
for g in $groups; do set -- "$@" --group "$g"; done
(umask 077 && printf '%s\n' "$token" >"$work/token")
if PATH="$opt/runtime/current/bin:$PATH" "$opt/current/ferry-agent" poll --now "$@" --token-file "$work/token" --json \
  >"$work/poll.json" 2>"$work/poll.err"; then
  say 'enrolled with the mirror'
else
  cat "$work/poll.err" >&2
  refuse ENROL_FAILED "$(cat "$work/poll.json") (the files are installed; run this script again with a fresh token)"
fi

# 6. Start it.
if [ $start = yes ]; then
  systemctl daemon-reload
  systemctl enable ferry-agent.service
  systemctl restart ferry-agent.service # starts it, or restarts an older agent on the new files
  say 'ferry-agent.service enabled and (re)started'
else
  say 'not started (--no-start): systemctl enable --now ferry-agent.service'
fi
echo "ferry agent $agent_v installed (runtime node $node_v, root sha256 $root_sha)"

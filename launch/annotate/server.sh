#!/usr/bin/env bash
# A local Label Studio for human preference labels (python -m train.annotate export/import talk to it).
#
#   bash launch/annotate/server.sh up      # install on first use, start in the background, wait for /health
#   bash launch/annotate/server.sh down    # stop it (its data stays)
#   bash launch/annotate/server.sh status
#
# Settings (environment): ANNOTATE_PORT (8089), ANNOTATE_DIR (outputs/annotate: SQLite data, pid, log, the
# admin's token and password), ANNOTATE_WAIT_S (300: how long `up` waits for /health), PYTHON (python3, for the
# server's own virtual environment).
#
# Label Studio pins its own Django stack, so it lives in a virtual environment of its own, outside the project's
# .venv, in a per-user cache keyed by its version: a fresh clone reuses it instead of paying the install again.
set -euo pipefail

LS_VERSION=1.23.2
PORT=${ANNOTATE_PORT:-8089}
DIR=${ANNOTATE_DIR:-outputs/annotate}
WAIT_S=${ANNOTATE_WAIT_S:-300}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/dpo-train/label-studio-$LS_VERSION
VENV=$CACHE/venv
TEMPLATE=$CACHE/migrated
DATA=$DIR/label-studio
PIDFILE=$DIR/server.pid
LOG=$DIR/server.log
TOKEN_FILE=$DIR/api-token
PASSWORD_FILE=$DIR/admin-password
USERNAME=admin@localhost
URL=http://127.0.0.1:$PORT

say() { echo "annotate: $*"; }
die() { echo "error: $*" >&2; exit 2; }

running_pid() {  # the pid of the server this directory started, if it is still alive
    [[ -f $PIDFILE ]] || return 1
    local pid; pid=$(cat "$PIDFILE")
    kill -0 "$pid" 2>/dev/null && echo "$pid"
}

install() {
    [[ -f $VENV/.installed && -f $TEMPLATE/label_studio.sqlite3 ]] && return 0
    mkdir -p "$CACHE"
    # One install at a time per cache (a second `up`, or a test, waits for the first).
    exec 9>"$CACHE/install.lock"
    flock 9
    if [[ ! -f $VENV/.installed ]]; then
        say "installing label-studio==$LS_VERSION into $VENV (first use only, several minutes; log: $CACHE/install.log)"
        local start=$SECONDS
        { "${PYTHON:-python3}" -m venv "$VENV" && "$VENV/bin/pip" install --upgrade pip \
            && "$VENV/bin/pip" install "label-studio==$LS_VERSION"; } > "$CACHE/install.log" 2>&1 \
            || { tail -20 "$CACHE/install.log" >&2
                 die "pip install label-studio==$LS_VERSION failed; see $CACHE/install.log"; }
        touch "$VENV/.installed"
        say "installed in $((SECONDS - start)) s"
    fi
    if [[ ! -f $TEMPLATE/label_studio.sqlite3 ]]; then
        # An empty database with every migration applied (`label-studio version` migrates, then exits): a new data
        # directory starts from a copy instead of migrating again, a start of seconds instead of minutes.
        say "migrating an empty database once into $TEMPLATE (a few minutes)"
        rm -rf "$TEMPLATE.tmp" && mkdir -p "$TEMPLATE.tmp"
        LABEL_STUDIO_BASE_DATA_DIR=$TEMPLATE.tmp LATEST_VERSION_CHECK=false "$VENV/bin/label-studio" version \
            > "$CACHE/migrate.log" 2>&1 \
            || { tail -20 "$CACHE/migrate.log" >&2; die "migrating failed; see $CACHE/migrate.log"; }
        mkdir -p "$TEMPLATE" && mv "$TEMPLATE.tmp/label_studio.sqlite3" "$TEMPLATE/" && rm -rf "$TEMPLATE.tmp"
    fi
    flock -u 9; exec 9>&-
}

secret() {  # a file only its owner reads, made once: the data directory's admin keeps its token across restarts
    local file=$1
    if [[ ! -s $file ]]; then
        (umask 077; "${PYTHON:-python3}" -c 'import secrets; print(secrets.token_hex(20))' > "$file")
    fi
    chmod 600 "$file"
}

health() { curl -fsS --max-time 5 "$URL/health" 2>/dev/null | grep -q '"UP"'; }

up() {
    mkdir -p "$DIR"
    if pid=$(running_pid); then
        say "already running at $URL (pid $pid)"; token_hint; return 0
    fi
    if health; then
        die "port $PORT already answers as a Label Studio that $DIR did not start: set ANNOTATE_PORT=<another port>"
    fi
    if ! "${PYTHON:-python3}" -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1', $PORT))" 2>/dev/null; then
        die "port $PORT on 127.0.0.1 is in use: set ANNOTATE_PORT=<a free port>"
    fi
    install
    secret "$TOKEN_FILE"
    secret "$PASSWORD_FILE"
    mkdir -p "$DATA"
    # Only the migrated tables are copied: each data directory keeps its own secret key (.env) and users.
    [[ -f $DATA/label_studio.sqlite3 ]] || cp "$TEMPLATE/label_studio.sqlite3" "$DATA/"
    say "starting Label Studio $LS_VERSION at $URL (data: $DATA, log: $LOG)"
    # The legacy token (--user-token) is refused since 1.21 unless the organization was created with this on.
    # The token and password go through the environment, not the command line other users can read in ps.
    # --internal-host is the address it binds (--host only names the URL its pages link to); no check of PyPI
    # for a newer version, which would wait on a machine without a way out.
    LABEL_STUDIO_BASE_DATA_DIR=$(cd "$DATA" && pwd) \
    LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true \
    LABEL_STUDIO_USERNAME=$USERNAME \
    LABEL_STUDIO_PASSWORD=$(cat "$PASSWORD_FILE") \
    LABEL_STUDIO_USER_TOKEN=$(cat "$TOKEN_FILE") \
    LATEST_VERSION_CHECK=false \
        setsid nohup "$VENV/bin/label-studio" start --no-browser --internal-host 127.0.0.1 --port "$PORT" \
        --host "$URL" > "$LOG" 2>&1 < /dev/null &
    echo $! > "$PIDFILE"
    local start=$SECONDS
    until health; do
        if ! running_pid > /dev/null; then
            tail -20 "$LOG" >&2; rm -f "$PIDFILE"; die "Label Studio exited while starting; see $LOG"
        fi
        if (( SECONDS - start > WAIT_S )); then
            tail -20 "$LOG" >&2; die "no answer from $URL/health after $WAIT_S s; see $LOG (or raise ANNOTATE_WAIT_S)"
        fi
        sleep 2
    done
    say "up at $URL after $((SECONDS - start)) s (pid $(cat "$PIDFILE"))"
    say "browser login: $USERNAME, password in $PASSWORD_FILE"
    token_hint
}

token_hint() {
    say "API token for python -m train.annotate: export LABEL_STUDIO_API_KEY=\$(cat $TOKEN_FILE) LABEL_STUDIO_URL=$URL"
}

down() {
    if ! pid=$(running_pid); then
        rm -f "$PIDFILE"; say "no Label Studio running from $DIR"; return 0
    fi
    say "stopping Label Studio (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"  # its own process group (setsid): the server's children too
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
    say "stopped; data kept in $DATA"
}

status() {
    if pid=$(running_pid); then say "running at $URL (pid $pid)"; token_hint; else say "not running (from $DIR)"; fi
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: bash launch/annotate/server.sh up|down|status (ANNOTATE_PORT=$PORT ANNOTATE_DIR=$DIR)" ;;
esac

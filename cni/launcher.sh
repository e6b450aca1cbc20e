#!/bin/bash -p
# netweft CNI plugin launcher (written by `netweft cni install`; do not edit).
# Fast path in bash builtins only (no fork, no exec): stdin and the CNI_* environment go to the
# node's CNI server over 127.0.0.1:@PORT@ (a privileged port), authenticated by the root-only
# token file. Anything unusual execs the Python launcher with stdin intact; it uses the unix
# socket, then does the work in-process. See cni/tcpwire.py for the framing.
# A host without that Python (a kind node; the launcher was installed from the daemon's image)
# cannot do the work in-process: with the server unreachable the answer is CNI error code 11,
# "try again later" (CNI spec, "Error" section: a transient condition), on stdout, exit 1.
nw_py=@PY@
nw_port=@PORT@
nw_token=@TOKEN@
nw_sock=@SOCK@
nw_log=@LOG@
nw_timeout=@TIMEOUT@

nw_lc_set=${LC_ALL+x} nw_lc=${LC_ALL-}
LC_ALL=C  # ${#var} counts bytes
trap '' PIPE  # a server gone mid-write is a fallback, not a death by signal (python ignores it too)
nw_in=
IFS= read -r -d '' nw_in
nw_nul=$?  # 1: EOF (CNI JSON); 0: stdin holds a NUL byte, the rest of it is still unread

nw_fallback() {  # nw_fallback WHY: the fast path cannot serve this call
    exec 3>&-
    if [[ $nw_lc_set ]]; then LC_ALL=$nw_lc; else unset LC_ALL; fi
    trap - PIPE
    local nw_interp=
    # the Python launcher's interpreter (its #! line); missing on a host without that Python
    { IFS=' ' read -r nw_interp _ < "$nw_py"; } 2>/dev/null
    nw_interp=${nw_interp#\#!}
    if (( EUID == 0 )) && [[ ! -x $nw_interp ]]; then
        nw_fail 11 "$1, and ${nw_interp:-$nw_py} to do the work in-process is not on this host: try again later, when the netweft daemon is up"
    fi
    shopt -s execfail  # an exec that fails returns here: answer with CNI error JSON
    if (( nw_nul == 0 )); then
        exec "$nw_py" < <(printf '%s\0' "$nw_in"; exec cat)
    else
        exec "$nw_py" < <(printf '%s' "$nw_in")
    fi
    if (( EUID == 0 )); then
        nw_fail 11 "$1, and $nw_py cannot be executed: try again later, when the netweft daemon is up"
    fi
    nw_fail 4 "cannot execute $nw_py as uid $EUID: the netweft CNI plugin must run as root"
}

nw_fail() {  # nw_fail CODE MSG: CNI error JSON on stdout, exit 1 (4: as the server's answer to
             # a non-root peer; 11: try again later)
    local v=1.0.0 msg=${2//\\/\\\\}
    msg=${msg//\"/\\\"}
    [[ $nw_in =~ \"cniVersion\"[[:space:]]*:[[:space:]]*\"([0-9]+\.[0-9]+\.[0-9]+)\" ]] \
        && v=${BASH_REMATCH[1]}
    printf '{"cniVersion": "%s", "code": %d, "msg": "netweft: %s"}\n' "$v" "$1" "$msg"
    exit 1
}

(( nw_port && nw_nul )) || nw_fallback "no TCP fast path for this call (port 0 or a NUL byte in stdin)"
case $nw_in in  # a config naming another server's socket: the Python launcher finds it
    *'"socketPath"'*)
        [[ ${nw_in#*'"socketPath"'} == *'"socketPath"'* ]] && nw_fallback "the config names socketPath twice"
        [[ $nw_in == *"\"socketPath\": \"$nw_sock\""* || \
           $nw_in == *"\"socketPath\":\"$nw_sock\""* ]] || nw_fallback "the config names another socketPath" ;;
esac
# the port must still be one only root can bind (the sysctl is per network namespace)
{ read -r nw_unpriv < /proc/sys/net/ipv4/ip_unprivileged_port_start; } 2>/dev/null
(( nw_port < ${nw_unpriv:-0} )) || nw_fallback "port $nw_port is not a privileged port in this network namespace"
{ IFS= read -r nw_tok < "$nw_token"; } 2>/dev/null \
    || nw_fallback "the netweft daemon's CNI server is not running (no token $nw_token)"
(( ${#nw_tok} == 64 )) || nw_fallback "the token $nw_token is not 64 bytes"
nw_env=
for nw_k in "${!CNI_@}"; do
    nw_v=${!nw_k}
    [[ $nw_v == *$'\n'* ]] && nw_fallback "$nw_k holds a newline"
    nw_env+="$nw_k=$nw_v"$'\n'
done
nw_env+="NETWEFT_CNI_DEFAULT_LOG=$nw_log"$'\n'
nw_env+="NETWEFT_CALLER_PID=$$"$'\n'  # verified by the server (cni/callerns.py): CNI_NETNS is
                                     # resolved in this process's mount namespace
{ exec 3<>"/dev/tcp/127.0.0.1/$nw_port"; } 2>/dev/null \
    || nw_fallback "the netweft daemon's CNI server does not answer on 127.0.0.1:$nw_port"
printf 'NWTCP1 %s\n%s%d\n\n%s' "$nw_tok" "$nw_env" "${#nw_in}" "$nw_in" >&3 2>/dev/null \
    || nw_fallback "the netweft daemon's CNI server closed 127.0.0.1:$nw_port"
IFS=' ' read -r -t "$nw_timeout" nw_code nw_len <&3 \
    || nw_fallback "no answer from 127.0.0.1:$nw_port within ${nw_timeout}s"
[[ $nw_code =~ ^[0-9]+$ && $nw_len =~ ^[0-9]+$ ]] || nw_fallback "a malformed answer from 127.0.0.1:$nw_port"
nw_out=
if (( nw_len )); then
    IFS= read -r -d '' -N "$nw_len" -t "$nw_timeout" nw_out <&3
    (( ${#nw_out} == nw_len )) || nw_fallback "a short answer from 127.0.0.1:$nw_port"
fi
exec 3>&-
printf '%s' "$nw_out"
exit "$nw_code"

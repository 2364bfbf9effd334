#!/usr/bin/env bash
# netns.sh BACKEND
#
# Two "hosts" on one machine: network namespaces A and B joined by a veth
# pair (10.213.7.1 in A, 10.213.7.2 in B) and nothing else, so the ranks can
# only talk over TCP across the veth. They share the filesystem, as hosts
# with a shared folder would.
#   gloo: rank 0 started in A, rank 1 in B, each with DMNIST_RANK,
#         DMNIST_WORLD_SIZE and one file:// rendezvous folder; rank 0 binds
#         by interface (comm.iface), rank 1 by address (comm.host).
#   mpi:  mpirun runs in A with -H 10.213.7.1,10.213.7.2; its rsh agent is a
#         script that starts orted in B (and under its own host name, via a
#         UTS namespace), instead of ssh. Open MPI is restricted to TCP on
#         the veth subnet (btl tcp,self: no shared memory between "hosts").
# The job must succeed, more than 5 MB must have crossed the veth (20 steps
# of 149,424-float gradients are about 12 MB each way), and the final
# parameter hash must equal that of the same job run with dmnist-run --np 2
# on loopback: the network changes nothing. Skipped (77) without the rights
# to make namespaces, or without mpirun for mpi.
source "$(dirname "$0")/../common/lib.sh" dmnist-dist
CFG=$SRC/configs/cnn-synthetic.ini
backend=${1:?backend}
[ "$(id -u)" = 0 ] || skip "not root: cannot create network namespaces"
command -v ip >/dev/null || skip "no ip command (iproute2)"
A=dmdist$$a B=dmdist$$b VA=dmv$$a VB=dmv$$b NET=10.213.7
ip netns add "$A" 2>"$TMP/ns.err" || { cat "$TMP/ns.err"; skip "ip netns add is not permitted here"; }
on_exit "ip netns del $A 2>/dev/null"
ip netns add "$B" || fail "ip netns add $B"
on_exit "ip netns del $B 2>/dev/null"
ip link add "$VA" type veth peer name "$VB" || skip "cannot create a veth pair"
ip link set "$VA" netns "$A" && ip link set "$VB" netns "$B" &&
    ip -n "$A" addr add $NET.1/24 dev "$VA" && ip -n "$B" addr add $NET.2/24 dev "$VB" &&
    ip -n "$A" link set lo up && ip -n "$B" link set lo up &&
    ip -n "$A" link set "$VA" up && ip -n "$B" link set "$VB" up || fail "setting up the veth pair"
tx_bytes() { ip -n "$A" -s link show "$VA" | awk '/TX:/ { getline; print $1 }'; }

STEPS=20
args=("$CFG" "${SMALL[@]}" --set experiment.backend="$backend" --set train.total_batches=$((2 * STEPS))
      --set train.sync_check_every=$STEPS --set experiment.timeout_s=30)
hash_of() { sed -n "s/.*sync-check step $STEPS: parameter hash \([0-9a-f]*\) on all 2 ranks.*/\1/p" "$1"; }

# The reference: both ranks on this host, over loopback.
run_ok "$TMP/ref.log" "$RUN" --np 2 "${args[@]}" --set experiment.backend=gloo
want=$(hash_of "$TMP/ref.log")
[ -n "$want" ] || { show "$TMP/ref.log"; fail "no sync-check hash in the loopback run"; }

tx0=$(tx_bytes)
pids=()
on_exit 'for p in ${pids[@]}; do kill -KILL $p; done 2>/dev/null'
if [ "$backend" = gloo ]; then
    for r in 0 1; do
        if [ $r = 0 ]; then ns=$A bind=(--set comm.iface="$VA"); else ns=$B bind=(--set comm.host=$NET.2); fi
        ip netns exec "$ns" env DMNIST_RANK=$r DMNIST_WORLD_SIZE=2 DMNIST_RENDEZVOUS="file://$TMP/rdzv" \
            timeout -k 5 100 "$RUN" "${args[@]}" "${bind[@]}" >"$TMP/rank$r.log" 2>&1 &
        pids+=($!)
    done
    for r in 0 1; do
        wait "${pids[$r]}" || { show "$TMP/rank$r.log"; fail "rank $r in namespace $([ $r = 0 ] && echo "$A" || echo "$B") failed"; }
    done
    log=$TMP/rank0.log
else
    command -v "$MPIRUN" >/dev/null || skip "no mpirun"
    # Open MPI's rsh agent: "AGENT HOST COMMAND..." where COMMAND is shell text.
    cat >"$TMP/agent.sh" <<EOF
#!/bin/sh
host=\$1; shift
case \$host in
$NET.1) ns=$A ;;
$NET.2) ns=$B ;;
*) echo "agent: unknown host \$host" >&2; exit 1 ;;
esac
echo "\$host" >>"$TMP/agent.hosts"
exec ip netns exec "\$ns" unshare -u sh -c "hostname host-\$ns; \$*"
EOF
    chmod +x "$TMP/agent.sh"
    ip netns exec "$A" unshare -u sh -c 'hostname "host-$0"; exec "$@"' "$A" \
        timeout -k 5 100 "$MPIRUN" "${MPI_ARGS[@]}" -np 2 -H $NET.1,$NET.2 --map-by node \
        --mca plm_rsh_agent "$TMP/agent.sh" --mca oob_tcp_if_include $NET.0/24 \
        --mca btl tcp,self --mca btl_tcp_if_include $NET.0/24 \
        "$RUN" "${args[@]}" >"$TMP/mpi.log" 2>&1 || { show "$TMP/mpi.log"; fail "mpirun across the namespaces failed"; }
    grep -qx "$NET.2" "$TMP/agent.hosts" 2>/dev/null || fail "mpirun never started anything on $NET.2 through the agent"
    log=$TMP/mpi.log
fi
got=$(hash_of "$log")
sent=$(($(tx_bytes) - tx0))
[ "$sent" -gt 5000000 ] || { show "$log"; fail "only $sent bytes left namespace $A over $VA"; }
[ "$got" = "$want" ] || { show "$log"; fail "final parameter hash $got across namespaces, $want on loopback"; }
ok "$backend across two network namespaces: $sent bytes over the veth, final hash $got as on loopback"
tail -n 1 "$log"

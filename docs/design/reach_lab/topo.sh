#!/bin/bash
# Issue 21 NAT lab: one "internet" L2 segment (203.0.113.0/24, a bridge inside netns mm-inet),
# a chain host, a public relay/bootstrap, three home routers (MASQUERADE) each with one host behind.
# usage: topo.sh up [--random-fully] | down
set -e
NS="mm-inet mm-chain mm-relay mm-pub mm-nat1 mm-nat2 mm-nat3 mm-p1 mm-p2 mm-c"
if [ "$1" = down ]; then for n in $NS; do ip netns del $n 2>/dev/null || true; done; exit 0; fi
MASQ_OPTS=""; [ "$2" = "--random-fully" ] && MASQ_OPTS="--random-fully"
for n in $NS; do ip netns add $n; ip -n $n link set lo up; done
ip -n mm-inet link add br0 type bridge; ip -n mm-inet link set br0 up
wan() {  # wan <ns> <ip>: a leg on the internet bridge, named wan0 inside <ns>
  ip link add "w-$1" type veth peer name wan0 netns "$1"
  ip link set "w-$1" netns mm-inet
  ip -n mm-inet link set "w-$1" master br0 up
  ip -n "$1" addr add "$2/24" dev wan0; ip -n "$1" link set wan0 up
}
wan mm-chain 203.0.113.10
wan mm-relay 203.0.113.2
wan mm-pub 203.0.113.3
i=1
for pair in "mm-nat1 mm-p1" "mm-nat2 mm-p2" "mm-nat3 mm-c"; do
  set -- $pair; nat=$1; host=$2
  wan $nat 203.0.113.1$i
  ip link add lan0 netns $nat type veth peer name eth0 netns $host
  ip -n $nat addr add 192.168.$i.1/24 dev lan0; ip -n $nat link set lan0 up
  ip -n $host addr add 192.168.$i.10/24 dev eth0; ip -n $host link set eth0 up
  ip -n $host route add default via 192.168.$i.1
  ip netns exec $nat sysctl -qw net.ipv4.ip_forward=1
  # the home router: source NAT for the LAN, nothing forwarded in unless conntrack knows it
  ip netns exec $nat iptables -t nat -A POSTROUTING -s 192.168.$i.0/24 -o wan0 -j MASQUERADE $MASQ_OPTS
  ip netns exec $nat iptables -P FORWARD DROP
  ip netns exec $nat iptables -A FORWARD -i lan0 -o wan0 -j ACCEPT
  ip netns exec $nat iptables -A FORWARD -i wan0 -o lan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  # unsolicited packets to the router itself are dropped, not answered with RST (as home routers do)
  ip netns exec $nat iptables -A INPUT -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  ip netns exec $nat iptables -A INPUT -i wan0 -j DROP
  i=$((i+1))
done
echo up

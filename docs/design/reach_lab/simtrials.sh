#!/bin/bash
# N trials of TCP simultaneous open between mm-p1 (behind nat1) and mm-p2 (behind nat2), each from its
# own listen port to the other's predicted address (NAT WAN IP : listen port), the second side late by
# a random 0-500 ms (DCUtR's RTT/2 sync is never exact).
N=${1:-10}; ok=0
for k in $(seq 1 $N); do
  p1port=$((4100+k)); p2port=$((4200+k)); start=$(python3 -c 'import time;print(time.time()+0.8)')
  skew=$(python3 -c 'import random;print(random.random()*0.5)')
  ip netns exec mm-p1 python3 probe.py simopen $p1port 203.0.113.12 $p2port $start > /tmp/so1 &
  a=$!
  ip netns exec mm-p2 python3 probe.py simopen $p2port 203.0.113.11 $p1port $(python3 -c "print($start+$skew)") > /tmp/so2
  wait $a
  r1=$(cat /tmp/so1); r2=$(cat /tmp/so2)
  echo "trial $k skew=${skew:0:5}: p1: $r1 | p2: $r2"
  [[ $r1 == OK* && $r2 == OK* ]] && ok=$((ok+1))
done
echo "success $ok/$N"

#!/bin/bash
# wait for the run writing log $1 to finish (its JSON appears), then start run.sh with the rest
while ! grep -q '"target_met"' /tmp/s21/$1.log 2>/dev/null; do sleep 10; done
sleep 3
exec /tmp/s21/run.sh "${@:2}"

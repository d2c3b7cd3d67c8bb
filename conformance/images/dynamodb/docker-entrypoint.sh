#!/bin/sh
# leasehold stand-in for amazon/dynamodb-local: the moto server's DynamoDB API
# on 0.0.0.0:8000. The official image's entrypoint is `java` and its command
# `-jar DynamoDBLocal.jar -inMemory`, so java-style arguments (the command
# starting with "-", or `java ...`) start the stand-in; it honours `-port N`
# and ignores the rest (moto keeps everything in memory). Any other command
# runs as is.
set -e
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ] || [ "$1" = java ]; then
    [ "${1:-}" != java ] || shift
    exec /opt/moto/bin/python /usr/local/bin/moto_standin.py "$@"
fi
exec "$@"

#!/bin/sh
# LocalStack ready hook: the queue trailguard reads, its dead-letter queue, a bucket that notifies
# the queue of new CloudTrail log files, and an EventBridge rule sending CloudTrail events to it.
set -e
awslocal sqs create-queue --queue-name cloudtrail-events-dlq
DLQ_ARN=$(awslocal sqs get-queue-attributes --queue-url http://localhost:4566/000000000000/cloudtrail-events-dlq \
  --attribute-names QueueArn --query Attributes.QueueArn --output text)
awslocal sqs create-queue --queue-name cloudtrail-events \
  --attributes "{\"VisibilityTimeout\":\"120\",\"RedrivePolicy\":\"{\\\"deadLetterTargetArn\\\":\\\"$DLQ_ARN\\\",\\\"maxReceiveCount\\\":\\\"5\\\"}\"}"
QUEUE_ARN=$(awslocal sqs get-queue-attributes --queue-url http://localhost:4566/000000000000/cloudtrail-events \
  --attribute-names QueueArn --query Attributes.QueueArn --output text)
awslocal s3 mb s3://example-cloudtrail
awslocal s3api put-bucket-notification-configuration --bucket example-cloudtrail \
  --notification-configuration "{\"QueueConfigurations\":[{\"QueueArn\":\"$QUEUE_ARN\",\"Events\":[\"s3:ObjectCreated:*\"]}]}"
awslocal events put-rule --name cloudtrail-to-sqs --event-pattern '{"source":[{"prefix":"aws."}],"detail-type":[{"suffix":"via CloudTrail"}]}'
awslocal events put-targets --rule cloudtrail-to-sqs --targets "Id=sqs,Arn=$QUEUE_ARN"

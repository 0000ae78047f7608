// Package skiffv1 holds the protobuf messages Skiff services exchange over
// NATS JetStream, generated from events.proto by `make proto`.
package skiffv1

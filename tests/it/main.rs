//! ferry's integration tests: the real binary, real nginx, real curl, on loopback.

mod helpers;

mod admin;
mod adversary;
mod api;
mod auth;
mod cli;
mod clients;
mod compose;
mod download;
mod edit;
mod funnel;
mod lifecycle;
mod mcp;
mod nas;
mod openapi;
mod raw;
mod redis;
mod reliability;
mod security;
mod store;
mod ui;
mod uploads;
mod webdriver;
mod wire;
mod zip;

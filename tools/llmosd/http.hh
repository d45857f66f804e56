// SPDX-License-Identifier: MIT
//
// llmosd's HTTP surface (cpp-httplib): the OpenAI-compatible endpoints,
// /health, /metrics, and /llmos/v1/models for model management.
#pragma once

#include "conn.hh"
#include "conn_pool.hh"
#include "daemon.hh"

#include <atomic>
#include <httplib.h>
#include <memory>

namespace llmosd {

class http_server {
public:
    explicit http_server(daemon& d);

    /// Binds host:port (port 0: any free one); returns the port, or -1.
    int bind_port(const std::string& host, int port);
    /// Serves until stop(); false if it could not.
    bool serve();
    /// Serves on a unix socket at `path`.
    bool listen_unix(const std::string& path);
    /// Any thread.
    void stop();

private:
    void generate(const httplib::Request& req, httplib::Response& res,
                  const httplib::ContentReader& body, bool chat);
    /// The request's body, read up to --max-body (chunked or not): false
    /// after answering 413 when it is larger.
    bool read_body(const httplib::ContentReader& reader, httplib::Response& res, std::string& out);
    /// Whether the request's API key lets it in (always, without a key
    /// file): false after answering 401, or 403 for a key not marked admin
    /// when `admin`. `tenant` gets the key's tenant.
    bool authorize(const httplib::Request& req, httplib::Response& res, uint32_t* tenant = nullptr,
                   bool admin = false);
    /// The request's API key, when it names one in the key file.
    const daemon::api_key* key_of(const httplib::Request& req) const;
    /// authorize() for the administration API (/llmos/v1/models).
    bool authorize_admin(const httplib::Request& req, httplib::Response& res);
    nlohmann::json describe(const model_entry& m) const;
    static std::pair<std::string, std::string> name_and_path(const std::string& body,
                                                             bool need_name);

    daemon& _d;
    /// Listening on TCP (bind_port()), which browsers reach.
    std::shared_ptr<std::atomic<bool>> _tcp = std::make_shared<std::atomic<bool>>(false);
    /// Listening on a loopback address only (bind_port()).
    std::shared_ptr<std::atomic<bool>> _loopback = std::make_shared<std::atomic<bool>>(false);
    connection_server _svr;
    std::atomic<connection_pool*> _pool{nullptr}; ///< _svr's, while it listens
};

} // namespace llmosd

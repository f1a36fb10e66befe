# capdsm_transport: node-to-node transport (transport.h). tp.c dispatches
# by tp_config.kind to ZeroMQ with CURVE (tp_zmq.c) or to TCP with
# libsodium (tp_tcp.c); tp_common.c is what both share. Included from
# node/CMakeLists.txt; capdsmd links it.
pkg_check_modules(ZMQ REQUIRED IMPORTED_TARGET libzmq)
if(NOT TARGET PkgConfig::SODIUM)
  pkg_check_modules(SODIUM REQUIRED IMPORTED_TARGET libsodium)
endif()
add_library(capdsm_transport STATIC
  ${CMAKE_CURRENT_LIST_DIR}/tp.c
  ${CMAKE_CURRENT_LIST_DIR}/tp_common.c
  ${CMAKE_CURRENT_LIST_DIR}/tp_zmq.c
  ${CMAKE_CURRENT_LIST_DIR}/tp_tcp.c
  ${CMAKE_CURRENT_LIST_DIR}/tp_rdma.c)
target_include_directories(capdsm_transport PUBLIC ${CMAKE_CURRENT_LIST_DIR})
pkg_check_modules(IBVERBS REQUIRED IMPORTED_TARGET libibverbs)
target_link_libraries(capdsm_transport PUBLIC PkgConfig::ZMQ PkgConfig::SODIUM
                      PkgConfig::IBVERBS)

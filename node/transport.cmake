# capdsm_transport: node-to-node transport (transport.h) over ZeroMQ with
# CURVE (tp_zmq.c). Included from node/CMakeLists.txt; capdsmd links it.
pkg_check_modules(ZMQ REQUIRED IMPORTED_TARGET libzmq)
add_library(capdsm_transport STATIC ${CMAKE_CURRENT_LIST_DIR}/tp_zmq.c)
target_include_directories(capdsm_transport PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(capdsm_transport PUBLIC PkgConfig::ZMQ)
